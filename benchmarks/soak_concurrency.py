"""Soak: N processes, each with T threads, run M operations against one bank at once.

    python -m benchmarks.soak_concurrency [--procs 8] [--ops 200] [--threads 2] [--busy-timeout 30] [--json]

Operations are observe (Memory Manager on the scripted test backend), add, update and delete, on a few
users shared by every process, so writers contend for the same memories. Afterwards the bank is checked:
every operation that returned success is in the history, the memories equal the replay of the history,
vectors and FTS rows agree with the memories (`Memory.check()`), and no "database is locked" error
reached a caller. Reports throughput and per-operation latency.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

USERS = ["u0", "u1", "u2"]
KINDS = ["observe", "observe", "add", "add", "update", "delete"]


def manager(messages: list[dict[str, str]]) -> dict[str, Any]:
    """Deterministic Memory Manager: add a fact from the turn, revise the first memory shown, drop a stale one."""
    from memr1.testing import prompt_data

    turn, memories = prompt_data(messages, "TURN"), prompt_data(messages, "MEMORIES")
    tag = turn["text"].split()[0]
    who = turn["speaker"]  # a fact names someone, or the parser drops it
    ops = [{"event": "ADD", "fact": f"{who} fact from {tag}"}]
    if memories:
        ops.append(
            {"event": "UPDATE", "id": memories[0]["id"], "fact": f"{who} {tag} revised {memories[0]['text']}"[:200]}
        )
    if len(memories) > 4:
        ops.append(
            {"event": "DELETE", "id": memories[-1]["id"], "fact": f"{who} {tag} replaced {memories[-1]['text']}"[:200]}
        )
    return {"facts": ops}


# ---- the worker: one process, several threads sharing one Memory ----


def worker(args: argparse.Namespace) -> None:
    from memr1 import LlamaEmbedder, Memory, MemR1Error
    from memr1.testing import ScriptedLLM

    embedder = LlamaEmbedder(args.embedder, n_threads=1)
    log_lock = threading.Lock()
    log = open(args.log, "a", encoding="utf-8")  # noqa: SIM115 - closed below, after the threads
    with Memory(args.db, embedder=embedder, manager=ScriptedLLM(manager), busy_timeout=args.busy_timeout) as mem:
        mem.search("warm up: load the model, build the index", user=USERS[0])
        print("ready", flush=True)
        sys.stdin.readline()  # all processes start at once: the figures are about contention, not start-up

        def run(thread: int) -> None:
            rng = random.Random(f"{args.name}-{thread}-{args.seed}")
            for i in range(thread, args.ops, args.threads):
                kind, user, tag = rng.choice(KINDS), rng.choice(USERS), f"{args.name}.{thread}.{i}"
                record: dict[str, Any] = {"proc": args.name, "op": kind, "user": user, "tag": tag, "t": time.time()}
                start = time.perf_counter()
                try:
                    if kind == "observe":
                        ops = mem.observe(
                            f"{tag} says something about {rng.choice(['tea', 'dogs', 'hiking'])}",
                            speaker=user,
                            user=user,
                        )
                        record["result"] = [
                            o.model_dump(include={"kind", "memory_id", "text", "previous"}) for o in ops
                        ]
                    elif kind == "add":
                        record["result"] = {
                            "id": mem.add(f"{tag} note on {user}", user=user).id,
                            "text": f"{tag} note on {user}",
                        }
                    else:
                        live = [m.id for m in mem.list(user=user)]
                        if not live:
                            continue
                        target = rng.choice(live)
                        if kind == "update":
                            record["result"] = {
                                "id": mem.update(target, f"{tag} edit", user=user).id,
                                "text": f"{tag} edit",
                            }
                        else:
                            mem.delete(target, user=user)
                            record["result"] = {"id": target}
                    record["ok"] = True
                except MemR1Error as e:
                    record.update(ok=False, error=type(e).__name__, message=str(e)[:300])
                except Exception as e:  # anything else escaping to a caller is a defect: record it, keep going
                    record.update(ok=False, error=type(e).__name__, message=str(e)[:300], foreign=True)
                record["seconds"] = time.perf_counter() - start
                with log_lock:
                    log.write(json.dumps(record) + "\n")
                    log.flush()

        threads = [threading.Thread(target=run, args=(t,)) for t in range(args.threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    log.close()


# ---- the parent: start the workers, then check the bank against what they were told ----


def check(db: Path, records: list[dict[str, Any]], embedder: str) -> dict[str, Any]:
    """Failures found in the bank; every successful operation must be in the history."""
    from memr1 import Memory

    failures: list[str] = []
    with Memory(db, embedder=embedder) as mem:
        failures += mem.check()
        rows = mem.store.query("SELECT memory_id, kind, before, after, actor FROM history")
        history = {(mid, kind, after, actor) for mid, kind, _, after, actor in rows}
        replaced = {(mid, kind, after): before for mid, kind, before, after, actor in rows if actor == "manager"}
        turns = {text.split()[0] for (text,) in mem.store.query("SELECT text FROM turns")}
        for r in records:
            if not r.get("ok"):
                continue
            res = r["result"]
            if r["op"] == "observe":
                if r["tag"] not in turns:
                    failures.append(f"{r['tag']}: observe succeeded but its turn is not stored")
                for op in res:
                    if op["kind"] == "NOOP":  # nothing written: the fact was held already
                        continue
                    after = op["text"] if op["kind"] != "DELETE" else None
                    if (op["memory_id"], op["kind"], after, "manager") not in history:
                        failures.append(f"{r['tag']}: observe returned {op} but the history lacks it")
                    elif op["kind"] != "ADD" and replaced[(op["memory_id"], op["kind"], after)] != op["previous"]:
                        # the model decided on one text, and the write replaced another: a lost update
                        failures.append(
                            f"{r['tag']}: {op['kind']} of #{op['memory_id']} was decided on "
                            f"{op['previous']!r} but replaced {replaced[(op['memory_id'], op['kind'], after)]!r}"
                        )
            elif r["op"] in ("add", "update"):
                if (res["id"], r["op"].upper(), res["text"], "api") not in history:
                    failures.append(f"{r['tag']}: {r['op']} of #{res['id']} succeeded but the history lacks it")
            elif (res["id"], "DELETE", None, "api") not in history:
                failures.append(f"{r['tag']}: delete of #{res['id']} succeeded but the history lacks it")
        stats = mem.stats()
    for r in records:
        if r.get("foreign"):
            failures.append(f"{r['tag']}: a non-memr1 exception reached the caller: {r['error']}: {r['message']}")
        elif "locked" in r.get("message", "").lower() and r.get("error") != "BankBusy":
            failures.append(f"{r['tag']}: 'database is locked' escaped as {r['error']}")
    return {"failures": failures, "stats": stats}


def run(
    procs: int,
    ops: int,
    threads: int,
    busy_timeout: float,
    embedder: str | None = None,
    workdir: Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the whole soak; returns the figures and the failures found."""
    from memr1 import LlamaEmbedder, Memory
    from memr1.tiny_models import write_embedding_model

    tmp = Path(workdir or tempfile.mkdtemp(prefix="memr1-soak-"))
    tmp.mkdir(parents=True, exist_ok=True)
    embedder = embedder or str(write_embedding_model(tmp / "embed.gguf", dim=32, seed=0))
    db = tmp / "bank.db"
    with Memory(db, embedder=LlamaEmbedder(embedder)) as mem:  # created once, so workers only write rows
        for user in USERS:
            mem.add(f"seed fact of {user}", user=user)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    logs = [tmp / f"p{i}.jsonl" for i in range(procs)]
    options = [
        "--db",
        str(db),
        "--embedder",
        embedder,
        "--ops",
        str(ops),
        "--threads",
        str(threads),
        "--busy-timeout",
        str(busy_timeout),
        "--seed",
        str(seed),
    ]
    pipe = subprocess.PIPE
    command = [sys.executable, "-m", "benchmarks.soak_concurrency", "--worker", *options]
    children = [
        subprocess.Popen(
            [*command, "--name", f"p{i}", "--log", str(log)],
            cwd=root,
            env=env,
            stdin=pipe,
            stdout=pipe,
            stderr=pipe,
            text=True,
        )
        for i, log in enumerate(logs)
    ]
    exits = []
    try:
        for child in children:  # every worker has loaded its models: start them all at once
            assert child.stdout is not None and child.stdout.readline().strip() == "ready", "a worker did not start"
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        for child in children:
            out, err = child.communicate(timeout=3600)
            exits.append((child.returncode, err[-2000:]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    wall = time.perf_counter() - started
    records = [json.loads(line) for log in logs if log.exists() for line in log.read_text().splitlines()]
    result = check(db, records, embedder)
    result["failures"] += [f"worker exited {code}: {err}" for code, err in exits if code != 0]
    ok = [r for r in records if r.get("ok")]
    latency = {
        kind: [r["seconds"] * 1000 for r in ok if r["op"] == kind] for kind in ("observe", "add", "update", "delete")
    }
    return {
        "procs": procs,
        "threads": threads,
        "ops_per_proc": ops,
        "busy_timeout_s": busy_timeout,
        "attempted": len(records),
        "succeeded": len(ok),
        "wall_s": wall,
        "ops_per_s": len(ok) / wall,
        "errors": dict(Counter(r["error"] for r in records if not r.get("ok"))),
        "latency_ms": {
            k: {"n": len(v), "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95))}
            for k, v in latency.items()
            if v
        },
        "all_p95_ms": float(np.percentile([r["seconds"] * 1000 for r in ok], 95)) if ok else float("nan"),
        "bank": {k: result["stats"][k] for k in ("memories", "history", "turns")},
        "overlap": _overlap(records),
        "failures": result["failures"],
    }


def _overlap(records: list[dict[str, Any]]) -> int:
    """How many processes were running operations at the busiest moment: 1 would mean no contention was tested."""
    spans: dict[str, list[float]] = {}
    for r in records:
        span = spans.setdefault(r["proc"], [r["t"], r["t"]])
        span[0], span[1] = min(span[0], r["t"]), max(span[1], r["t"] + r["seconds"])
    return max((sum(a <= t <= b for a, b in spans.values()) for t, _ in spans.values()), default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--ops", type=int, default=200, help="operations per process")
    parser.add_argument("--threads", type=int, default=2, help="threads per process, sharing one Memory")
    parser.add_argument("--busy-timeout", type=float, default=30.0)
    parser.add_argument("--embedder", help="embedding GGUF (default: a tiny one written locally)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    out = run(args.procs, args.ops, args.threads, args.busy_timeout, args.embedder, seed=args.seed)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{out['procs']} processes x {out['threads']} threads, {out['ops_per_proc']} operations each: "
            f"{out['succeeded']}/{out['attempted']} succeeded in {out['wall_s']:.1f}s ({out['ops_per_s']:.1f} ops/s)"
        )
        print(f"errors returned to callers: {out['errors'] or 'none'}")
        for kind, lat in out["latency_ms"].items():
            print(f"  {kind:<8} n={lat['n']:<5} p50 {lat['p50']:7.1f} ms   p95 {lat['p95']:7.1f} ms")
        print(f"bank: {out['bank']}")
        print(f"failures: {len(out['failures'])}")
        for failure in out["failures"][:20]:
            print(f"  {failure}")
    sys.exit(1 if out["failures"] else 0)


if __name__ == "__main__":
    main()
