"""Hand-written Memory Manager scenarios on real models: a few turns each, then checks on the bank.

    python -m benchmarks.manager_cases --model ../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --model ~/.cache/memr1-eval-models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \\
        --embedder ../shared/models/all-MiniLM-L6-v2-f16.gguf [--only buddy] [--json]

Each case starts from a fresh bank, optionally seeded with memories (as earlier turns would have left
them), observes its turns through `Memory.observe` with the model as manager, and checks the bank:
new facts added, Buddy -> Scout consolidated by an UPDATE that keeps both dogs, a contradiction updated or
deleted, a known fact left alone, small talk storing nothing, relative dates resolved. Reports the pass
rate per model and category, the operations by kind, and the ops dropped (with why).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DAY = "2023-05-08T13:56"


@dataclass
class Case:
    name: str
    kind: str  # new fact | small talk | relative date | known fact | consolidation | contradiction
    turns: list[str]
    seed: list[str] = field(default_factory=list)
    speaker: str = "Andrew"
    at: str = DAY
    has: list[list[str]] = field(default_factory=list)  # each: one memory holds all these words
    lacks: list[list[str]] = field(default_factory=list)  # each: no memory holds all these words
    count: int | None = None  # memories afterwards
    last_ops: set[str] | None = None  # the last turn's ops must include one of these kinds


CASES = [
    # new facts: ADD
    Case("buddy", "new fact", ["I adopted a dog named Buddy."], has=[["Buddy", "dog"]]),
    Case("nurse", "new fact", ["I just started my new job as a nurse at the city hospital."], has=[["nurse"]]),
    Case("seattle", "new fact", ["We're moving to Seattle next spring, I can't wait!"], has=[["Seattle"]]),
    Case(
        "painting",
        "new fact",
        ["Painting has become my favourite hobby, I paint landscapes every weekend."],
        has=[["paint"]],
    ),
    Case("sister", "new fact", ["My sister Emma is visiting from London this summer."], has=[["Emma"]]),
    Case("peanuts", "new fact", ["Be careful with snacks, I'm allergic to peanuts."], has=[["peanut"]]),
    Case("book", "new fact", ["My favourite book is Dune, I've read it five times."], has=[["Dune"]]),
    Case(
        "two facts",
        "new fact",
        ["I play the violin, and my daughter Lily just turned six."],
        has=[["violin"], ["Lily"]],
    ),
    # small talk: nothing stored
    Case("greeting", "small talk", ["Hey Caroline, how are you doing?"], count=0),
    Case("thanks", "small talk", ["Thanks so much, talk to you soon!"], count=0),
    Case("laugh", "small talk", ["Haha, that's hilarious!"], count=0),
    Case("morning", "small talk", ["Good morning! Long time no see."], count=0),
    Case("question", "small talk", ["What about you, what have you been up to?"], count=0),
    Case("bye", "small talk", ["Okay, bye for now, take care!"], count=0),
    # relative dates, resolved against the turn's date (Monday 8 May 2023)
    Case(
        "yesterday",
        "relative date",
        ["I went to an LGBTQ support group yesterday, it was so powerful."],
        speaker="Caroline",
        has=[["support", "7 May 2023"]],
    ),
    Case(
        "tomorrow", "relative date", ["I'm flying to Tokyo tomorrow for a conference."], has=[["Tokyo", "9 May 2023"]]
    ),
    Case("last week", "relative date", ["Last week I ran my first 5k race!"], has=[["5k", "week before 8 May 2023"]]),
    Case("years ago", "relative date", ["I started pottery two years ago."], has=[["pottery", "2021"]]),
    Case("last friday", "relative date", ["Last Friday I went camping with my kids."], has=[["camping", "5 May 2023"]]),
    # a fact already held: no write
    Case(
        "known dog",
        "known fact",
        ["Buddy, my dog, is doing great!"],
        seed=["Andrew has a dog named Buddy."],
        count=1,
        has=[["Buddy"]],
    ),
    Case("known job", "known fact", ["Yeah, I still work as a nurse."], seed=["Andrew works as a nurse."], count=1),
    Case("known city", "known fact", ["Like I said, I live in Seattle."], seed=["Andrew lives in Seattle."], count=1),
    # consolidation by UPDATE, keeping what is still true
    Case(
        "scout",
        "consolidation",
        ["I adopted a dog named Buddy.", "I adopted another dog, Scout!"],
        has=[["Buddy", "Scout"]],
        last_ops={"UPDATE"},
    ),
    Case(
        "scout seeded",
        "consolidation",
        ["I adopted another dog, Scout!"],
        seed=["Andrew adopted a dog named Buddy."],
        has=[["Buddy", "Scout"]],
        last_ops={"UPDATE"},
    ),
    Case(
        "second language",
        "consolidation",
        ["I've started learning Italian too."],
        seed=["Andrew speaks Spanish."],
        has=[["Spanish", "Italian"]],
        last_ops={"UPDATE"},
    ),
    Case(
        "more kids",
        "consolidation",
        ["Our second son, Noah, was born last month!"],
        seed=["Andrew has a son named Leo."],
        has=[["Noah"]],
        last_ops={"UPDATE", "ADD"},
    ),
    # contradiction: updated or deleted
    Case(
        "meat",
        "contradiction",
        ["I started eating meat again last month."],
        seed=["Andrew is vegetarian."],
        has=[["meat"]],
        last_ops={"UPDATE", "DELETE"},
    ),
    Case(
        "denver",
        "contradiction",
        ["I just moved from Boston to Denver!"],
        seed=["Andrew lives in Boston."],
        has=[["Denver"]],
        last_ops={"UPDATE", "DELETE"},
    ),
    Case(
        "quit job",
        "contradiction",
        ["I quit my job at the bank, I'm a teacher now."],
        seed=["Andrew works at a bank."],
        has=[["teacher"]],
        last_ops={"UPDATE", "DELETE"},
    ),
    Case(
        "single",
        "contradiction",
        ["Sarah and I broke up, so I'm single again."],
        seed=["Andrew is dating Sarah."],
        has=[["single"]],
        last_ops={"UPDATE", "DELETE"},
    ),
]


def _holds(text: str, words: list[str]) -> bool:
    return all(w.lower() in text.lower() for w in words)


def run_case(case: Case, embedder: str, model: str, tmp: Path) -> dict[str, Any]:
    from memr1 import Memory, MemR1Error

    db = tmp / f"{Path(model).stem}-{case.name.replace(' ', '_')}.db"
    ops: list[str] = []
    last: list[str] = []
    errors: list[str] = []
    start = time.perf_counter()
    with Memory(db, embedder=embedder, manager=model, answerer=model) as mem:
        for text in case.seed:
            mem.add(text, at="2023-04-01", user="u")
        for text in case.turns:
            try:
                last = [op.kind for op in mem.observe(text, speaker=case.speaker, at=case.at, user="u")]
            except MemR1Error as e:
                errors.append(f"{type(e).__name__}: {e}")
                last = []
            ops += last
        memories = [m.text for m in mem.list(user="u")]
        dropped = mem.usage["dropped_ops"]
    failed = [f"no memory holds {words}" for words in case.has if not any(_holds(m, words) for m in memories)]
    failed += [f"a memory holds {words}" for words in case.lacks if any(_holds(m, words) for m in memories)]
    if case.count is not None and len(memories) != case.count:
        failed.append(f"{len(memories)} memories, expected {case.count}")
    if case.last_ops is not None and not case.last_ops & set(last):
        failed.append(f"last turn's ops {last}, expected one of {sorted(case.last_ops)}")
    failed += errors
    return {
        "case": case.name,
        "kind": case.kind,
        "passed": not failed,
        "why": failed,
        "ops": ops,
        "dropped": dropped,
        "memories": memories,
        "seconds": time.perf_counter() - start,
    }


class _DropReasons(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.reasons: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "op dropped" in message:
            reason = message.split("dropped: ", 1)[-1]
            kinds = {
                "shares no word": "not grounded in the turn",
                "names nobody": "names nobody",
                "was not shown": "id not shown",
                "empty fact": "empty fact",
            }
            self.reasons[next((kind for key, kind in kinds.items() if key in reason), reason)] += 1


def run(models: list[str], embedder: str, only: str | None = None) -> dict[str, Any]:
    reasons = _DropReasons()
    logger = logging.getLogger("memr1.prompts")
    logger.addHandler(reasons)
    logger.setLevel(logging.WARNING)  # drops are warnings: count them whatever the root logger lets through
    logger.propagate = False  # counted in the report, not printed one by one
    tmp = Path(tempfile.mkdtemp(prefix="memr1-cases-"))
    cases = [c for c in CASES if not only or only in c.name or only == c.kind]
    out: dict[str, Any] = {}
    for model in models:
        reasons.reasons.clear()
        rows = [run_case(case, embedder, model, tmp) for case in cases]
        kinds = Counter(op for r in rows for op in r["ops"])
        by_kind: dict[str, list[int]] = {}
        for r in rows:
            by_kind.setdefault(r["kind"], [0, 0])[0] += r["passed"]
            by_kind[r["kind"]][1] += 1
        turns = sum(len(c.turns) for c in cases)
        out[Path(model).name] = {
            "passed": sum(r["passed"] for r in rows),
            "cases": len(rows),
            "by_kind": by_kind,
            "ops": dict(kinds),
            "dropped": sum(r["dropped"] for r in rows),
            "drop_reasons": dict(reasons.reasons),
            "turns": turns,
            "seconds_per_turn": sum(r["seconds"] for r in rows) / turns,
            "rows": rows,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="chat GGUF; repeat for several")
    parser.add_argument("--embedder", required=True)
    parser.add_argument("--only", help="run the cases whose name contains this, or of this kind")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--verbose", action="store_true", help="print every failed case and the bank it left")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out = run(args.model, args.embedder, args.only)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    kinds = list(dict.fromkeys(c.kind for c in CASES))
    print("| model | passed | " + " | ".join(kinds) + " | ADD | UPDATE | DELETE | NOOP | dropped | s/turn |")
    print("|---|---:|" + "---:|" * len(kinds) + "---:|---:|---:|---:|---:|---:|")
    for name, r in out.items():
        cells = [f"{r['by_kind'][k][0]}/{r['by_kind'][k][1]}" if k in r["by_kind"] else "-" for k in kinds]
        ops = [str(r["ops"].get(k, 0)) for k in ("ADD", "UPDATE", "DELETE", "NOOP")]
        print(
            f"| {name} | {r['passed']}/{r['cases']} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(ops)
            + f" | {r['dropped']} | {r['seconds_per_turn']:.1f} |"
        )
    for name, r in out.items():
        print(f"\n{name}: drops by reason {r['drop_reasons'] or 'none'}")
        if args.verbose:
            for row in r["rows"]:
                if not row["passed"]:
                    print(f"  FAIL {row['case']}: {'; '.join(row['why'])} | ops {row['ops']} | bank {row['memories']}")


if __name__ == "__main__":
    main()
