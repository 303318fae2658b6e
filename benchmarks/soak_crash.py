"""Soak: writers killed with SIGKILL at random moments during observe, ingest and import_jsonl.

    python -m benchmarks.soak_crash [--trials 300] [--max-delay 1.0] [--json]

Each trial starts a worker process on one shared bank and kills it (SIGKILL: no cleanup, no atexit)
after a random delay. Every tenth trial starts from no bank at all and may kill the worker while it
creates the schema. After each kill the bank must open, pass `Memory.check()` (SQLite integrity_check,
the FTS5 index against its table, one vector per memory and no other, memories equal to the replay
of the history), and hold each turn's operations all or not at all, and each import whole or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

OPS_PER_TURN = 1  # ADDs the scripted manager makes for every turn, besides an UPDATE and a DELETE: three facts
IMPORT_SIZE = 40  # memories in the file each import brings in
MODES = ("observe", "ingest", "import")


def manager(messages: list[dict[str, str]]) -> dict[str, Any]:
    from memr1.testing import prompt_data

    turn, memories = prompt_data(messages, "TURN"), prompt_data(messages, "MEMORIES")
    tag = turn["text"].split()[0]
    ops = [{"event": "ADD", "fact": f"Ann {tag} fact {j}"} for j in range(OPS_PER_TURN)]
    # changes name what they change: the parser turns a change to an unrelated memory into an ADD
    if memories:
        ops.append(
            {"event": "UPDATE", "id": memories[0]["id"], "fact": f"Ann {tag} updated {memories[0]['text']}"[:200]}
        )
    if len(memories) > 3:
        ops.append(
            {"event": "DELETE", "id": memories[-1]["id"], "fact": f"Ann {tag} replaced {memories[-1]['text']}"[:200]}
        )
    return {"facts": ops}


def worker(args: argparse.Namespace) -> None:
    """Write forever, until killed."""
    from memr1 import LlamaEmbedder, Memory
    from memr1.testing import ScriptedLLM

    embedder = LlamaEmbedder(args.embedder, n_threads=1)
    with Memory(args.db, embedder=embedder, manager=ScriptedLLM(manager)) as mem:
        embedder.embed(["warm up"])
        source, copy = Path(args.source).read_text(), Path(f"{args.db}.{os.getpid()}.jsonl")
        print("ready", flush=True)
        n = 0
        while True:
            n += 1
            tag = f"p{os.getpid()}x{n}"  # one word: the parser compares facts word by word
            if args.mode == "observe":
                mem.observe(f"{tag} I went hiking with my dog", speaker="Ann", user="ann")
            elif args.mode == "ingest":
                mem.observe_many(
                    [{"text": f"{tag}y{i} I like tea number {i}", "speaker": "Ann"} for i in range(5)],
                    user="ann",
                    progress=False,
                )
            else:  # a user of its own each time: the same memories again would be skipped, adding nothing
                copy.write_text(source.replace('"user": "imp"', f'"user": "imp-{tag}"'))
                mem.import_jsonl(copy)


def make_import_file(path: Path, embedder: str) -> None:
    from memr1 import LlamaEmbedder, Memory

    with Memory(path.with_suffix(".db"), embedder=LlamaEmbedder(embedder)) as mem:
        for i in range(IMPORT_SIZE):
            item = mem.add(f"imported fact {i}", user="imp", metadata={"i": i})
            if i % 4 == 0:
                mem.update(item.id, f"imported fact {i}, revised")
        mem.export(path)


def audit(db: Path, embedder: str) -> tuple[list[str], int]:
    """Everything wrong with the bank after a kill, and its history length (to see work was committed)."""
    from memr1 import Memory

    problems: list[str] = []
    with Memory(db, embedder=embedder) as mem:
        problems += mem.check()
        q = mem.store.query
        head = q("SELECT coalesce(max(id), 0) FROM history")[0][0]
        turns = {tid: text.split()[0] for tid, text in q("SELECT id, text FROM turns")}
        adds: dict[int, list[str]] = {}
        deletes: dict[int, int] = {}
        for turn_id, kind, after in q("SELECT turn_id, kind, after FROM history WHERE actor = 'manager'"):
            if turn_id not in turns:
                problems.append(f"a manager {kind} cites turn {turn_id}, which is not stored")
            elif kind == "ADD":
                adds.setdefault(turn_id, []).append(after)
            elif kind == "DELETE":
                deletes[turn_id] = deletes.get(turn_id, 0) + 1
        for turn_id, tag in turns.items():
            # a DELETE stores the fact that replaced the memory: one "replaced" ADD each
            expected = [f"Ann {tag} fact {j}" for j in range(OPS_PER_TURN)]
            replaced = [a for a in adds.get(turn_id, []) if a.startswith(f"Ann {tag} replaced ")]
            if sorted(set(adds.get(turn_id, [])) - set(replaced)) != expected or len(replaced) != deletes.get(
                turn_id, 0
            ):
                problems.append(f"turn {tag} is stored with ADDs {adds.get(turn_id, [])}, not {expected}")
        imported = q(
            "SELECT count(*) FROM history WHERE actor != 'manager' AND after LIKE 'imported fact %' AND kind = 'ADD'"
        )[0][0]
        if imported % IMPORT_SIZE:
            problems.append(f"{imported} imported memories: not a whole number of imports of {IMPORT_SIZE}")
    return problems, head


def run(
    trials: int,
    max_delay: float = 1.0,
    embedder: str | None = None,
    workdir: Path | None = None,
    seed: int = 0,
    fresh_every: int = 10,
) -> dict[str, Any]:
    from memr1.tiny_models import write_embedding_model

    tmp = Path(workdir or tempfile.mkdtemp(prefix="memr1-crash-"))
    tmp.mkdir(parents=True, exist_ok=True)
    embedder = embedder or str(write_embedding_model(tmp / "embed.gguf", dim=32, seed=0))
    source = tmp / "import.jsonl"
    make_import_file(source, embedder)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    rng = random.Random(seed)
    db = tmp / "bank.db"
    failures: list[dict[str, Any]] = []
    killed: Counter[str] = Counter()
    survived, committed, head = 0, Counter(), 0
    started = time.perf_counter()
    for trial in range(trials):
        fresh = fresh_every and trial % fresh_every == 0
        if fresh:  # kill it while it creates the bank, too
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            head = 0
        mode = MODES[trial % len(MODES)]
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.soak_crash",
                "--worker",
                "--mode",
                mode,
                "--db",
                str(db),
                "--embedder",
                embedder,
                "--source",
                str(source),
            ],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if not fresh:
                line = child.stdout.readline() if child.stdout else ""
                if line.strip() != "ready":
                    failures.append({"trial": trial, "mode": mode, "problems": [f"worker did not start: {line!r}"]})
            time.sleep(rng.uniform(0, max_delay))
            if child.poll() is not None:
                survived += 1  # it stopped by itself: a crash of its own, reported below
                failures.append(
                    {
                        "trial": trial,
                        "mode": mode,
                        "problems": [
                            f"worker exited {child.returncode}: {child.stderr.read()[-500:] if child.stderr else ''}"
                        ],
                    }
                )
                continue
            child.send_signal(signal.SIGKILL)
            killed[mode] += 1
        finally:
            child.kill()
            child.wait()
            for stream in (child.stdout, child.stderr):
                if stream:
                    stream.close()
        if db.exists():
            try:
                problems, new_head = audit(db, embedder)
                committed[mode] += new_head > head  # the worker got work done before it was killed
                head = new_head
            except Exception as e:
                problems = [f"the bank does not open: {type(e).__name__}: {e}"]
            if problems:
                failures.append({"trial": trial, "mode": mode, "problems": problems[:10]})
    from memr1 import Memory

    with Memory(db, embedder=embedder) as mem:
        stats = {k: mem.stats()[k] for k in ("memories", "history", "turns")}
    return {
        "trials": trials,
        "killed": dict(killed),
        "committed_before_kill": dict(committed),
        "failed_trials": len(failures),
        "failures": failures,
        "exited_by_themselves": survived,
        "seconds": time.perf_counter() - started,
        "final_bank": stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--max-delay", type=float, default=1.0, help="kill within this many seconds of start")
    parser.add_argument("--embedder", help="embedding GGUF (default: a tiny one written locally)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    out = run(args.trials, args.max_delay, args.embedder, seed=args.seed)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['trials']} trials in {out['seconds']:.0f}s; killed with SIGKILL during: {out['killed']}")
        print(f"trials whose worker committed work before the kill: {out['committed_before_kill']}")
        print(f"final bank: {out['final_bank']}")
        print(f"failed trials: {out['failed_trials']}")
        for failure in out["failures"][:20]:
            print(f"  trial {failure['trial']} ({failure['mode']}): {failure['problems'][:3]}")
    sys.exit(1 if out["failures"] else 0)


if __name__ == "__main__":
    main()
