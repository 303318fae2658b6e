"""Processes and threads sharing a machine: latency per operation with 1, 2 and 4 processes, and two threads of
one process sharing a Memory (observe on one, ask on the other).

    python -m benchmarks.contention --embedder ../shared/models/all-MiniLM-L6-v2-f16.gguf \\
        --chat ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf [--seconds 20] [--procs 1,2,4] [--json]

Each process opens a bank of its own (so the figures are about CPU, not SQLite locks), loads the real
embedder, waits until every process is ready, then runs add + search for `--seconds`. Two runtimes are
measured side by side, in the same run: memr1's (passive OpenMP wait, thread defaults) and llama.cpp's own
defaults as memr1 ran them before (OpenMP's default wait policy, every core for prompt processing).

The target (issue 10): with 2 processes, p50 per operation at most 2x the single-process p50.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = [
    "Andrew adopted a dog named Buddy last week.",
    "Caroline went to an LGBTQ support group yesterday.",
    "Melanie is painting a sunrise over the lake.",
    "What pets does Andrew have?",
]
RUNTIMES = {"memr1": False, "before (llama.cpp defaults)": True}


def _percentiles(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": float(np.percentile(values, 50)), "p95": float(np.percentile(values, 95))}


def worker(args: argparse.Namespace) -> None:
    from memr1 import LlamaEmbedder, Memory, embedding

    if args.before:  # memr1 before issue 10: OpenMP's own wait policy, llama-cpp-python's thread defaults
        os.environ.pop("OMP_WAIT_POLICY", None)  # llama.cpp is not loaded yet, so this still counts
        embedding.thread_count = lambda role, explicit=None: None  # type: ignore[assignment]
    with Memory(args.db, embedder=LlamaEmbedder(args.embedder)) as mem:
        mem.add("warm up: load the model")
        mem.search("warm up: build the index")
        print("ready", flush=True)
        sys.stdin.readline()
        times: dict[str, list[float]] = {"add": [], "search": []}
        end, i = time.perf_counter() + args.seconds, 0
        while time.perf_counter() < end:
            text = f"{TEXTS[i % len(TEXTS)]} ({i})"
            start = time.perf_counter()
            mem.add(text)
            times["add"].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            mem.search(text, k=10)
            times["search"].append((time.perf_counter() - start) * 1000)
            i += 1
    print(json.dumps(times), flush=True)


def processes(n: int, before: bool, embedder: str, seconds: float, tmp: Path) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    command = [
        sys.executable,
        "-m",
        "benchmarks.contention",
        "--worker",
        "--embedder",
        embedder,
        "--seconds",
        str(seconds),
        *(["--before"] if before else []),
    ]
    pipe = subprocess.PIPE
    children = [
        subprocess.Popen(
            [*command, "--db", str(tmp / f"p{n}-{i}-{before}.db")],
            cwd=root,
            env=env,
            stdin=pipe,
            stdout=pipe,
            stderr=pipe,
            text=True,
        )
        for i in range(n)
    ]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "ready", child.stderr.read()  # type: ignore[union-attr]
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outs = [
            json.loads(child.communicate(timeout=seconds * 20 + 120)[0].strip().splitlines()[-1]) for child in children
        ]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    return {op: _percentiles([t for out in outs for t in out[op]]) for op in ("add", "search")}


def shared_memory(embedder: str, chat: str, turns: int, tmp: Path) -> dict[str, Any]:
    """Observe on one thread while another asks, against each alone, on one Memory."""
    from memr1 import Memory

    with Memory(tmp / "threads.db", embedder=embedder, manager=chat, answerer=chat) as mem:
        for text in TEXTS[:3]:
            mem.add(text, user="andrew")
        # observe writes as another user: the manager's changes must not empty the bank the questions read
        mem.observe("Hello there!", speaker="Caroline", user="caroline")  # load both agents before timing
        mem.ask("Who is Buddy?", user="andrew")

        def observe(out: list[float], n: int) -> None:
            for i in range(n):
                start = time.perf_counter()
                mem.observe(f"{TEXTS[i % 3]} It was great.", speaker="Caroline", user="caroline")
                out.append(time.perf_counter() - start)

        def ask(out: list[float], n: int) -> None:
            for i in range(n):
                start = time.perf_counter()
                mem.ask(["Who is Buddy?", "What is Melanie painting?", "Where did Caroline go?"][i % 3], user="andrew")
                out.append(time.perf_counter() - start)

        alone: dict[str, list[float]] = {"observe": [], "ask": []}
        observe(alone["observe"], turns)
        ask(alone["ask"], turns)
        together: dict[str, list[float]] = {"observe": [], "ask": []}
        threads = [
            threading.Thread(target=observe, args=(together["observe"], turns)),
            threading.Thread(target=ask, args=(together["ask"], turns)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {
        mode: {op: _percentiles([s * 1000 for s in times]) for op, times in figures.items()}
        for mode, figures in (("alone", alone), ("two threads", together))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", required=True, help="embedding GGUF (the real MiniLM)")
    parser.add_argument("--chat", help="chat GGUF for the shared-Memory threads (SmolLM2); omit to skip")
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--seconds", type=float, default=20.0, help="per process count and runtime")
    parser.add_argument("--turns", type=int, default=12, help="observe and ask calls per thread")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--before", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="memr1-contention-"))
    counts = [int(n) for n in args.procs.split(",")]
    result: dict[str, Any] = {"processes": {}, "cores": os.cpu_count()}
    for name, before in RUNTIMES.items():
        result["processes"][name] = {n: processes(n, before, args.embedder, args.seconds, tmp) for n in counts}
    if args.chat:
        result["threads"] = shared_memory(args.embedder, args.chat, args.turns, tmp)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"add + search per process, own bank each, real embedder, {result['cores']} cores, {args.seconds:g} s each")
    print("| runtime | processes | add p50 ms | add p95 ms | search p50 ms | search p95 ms | p50 vs 1 process |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rows in result["processes"].items():
        base = statistics.mean([rows[counts[0]][op]["p50"] for op in ("add", "search")])
        for n, row in rows.items():
            ratio = statistics.mean([row[op]["p50"] for op in ("add", "search")]) / base
            print(
                f"| {name} | {n} | {row['add']['p50']:.1f} | {row['add']['p95']:.1f} | {row['search']['p50']:.1f} "
                f"| {row['search']['p95']:.1f} | {ratio:.2f}x |"
            )
    if "threads" in result:
        print("\nobserve and ask on one Memory (ms)")
        print("| mode | observe p50 | observe p95 | ask p50 | ask p95 |")
        print("|---|---:|---:|---:|---:|")
        for mode, row in result["threads"].items():
            print(
                f"| {mode} | {row['observe']['p50']:.0f} | {row['observe']['p95']:.0f} | {row['ask']['p50']:.0f} "
                f"| {row['ask']['p95']:.0f} |"
            )


if __name__ == "__main__":
    main()
