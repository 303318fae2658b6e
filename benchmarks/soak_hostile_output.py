"""Soak: a random-weight model as an adversary of both agents, on the real llama.cpp path.

    python -m benchmarks.soak_hostile_output [--generations 1000] [--json]

Tiny random-weight chat models (memr1.tiny_models.write_chat_model, one per weight seed) drive the
Memory Manager (observe) and the Answer Agent (ask) through `Memory`, one constrained generation per
call (retries=0), across sampling seeds and three settings: free sampling, hot sampling (temperature
3, which brings control characters and odd ids) and generations cut at a random max_tokens of 1-40.
Every call must end in valid operations or a clean, logged refusal (ModelOutputError) with the bank
unchanged; valid operations may only touch memories the model was shown. Reports the distribution
of outcomes, of refusal reasons, and of the hostile features seen in the raw outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

SETTINGS = [("free", 1.0, None), ("hot", 3.0, None), ("cut", 1.0, "random")]
TOPICS = "dog hiking painting guitar nurse Paris sister birthday camping pottery marathon book".split()


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def features(raw: str, agent: str, shown: int) -> set[str]:
    """The hostile traits of one raw generation."""
    out: set[str] = set()
    if not raw.strip():
        out.add("empty output")
    try:
        data = json.loads(raw, strict=False)
    except ValueError:
        out.add("cut short / not JSON")
        if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", raw):
            out.add("control characters")
        return out
    if any(re.search(r"[\x00-\x1f\x7f-\x9f]", s) for s in _strings(data)):
        out.add("control characters")
    if agent == "manager":
        ops = data.get("facts", []) if isinstance(data, dict) else []
        ids = [op.get("id") for op in ops if isinstance(op, dict) and op.get("event") != "ADD"]
        if not ops:
            out.add("empty operation list")
        if any(isinstance(op, dict) and not str(op.get("fact", "x")).strip() for op in ops):
            out.add("empty text")
    else:
        ids = data.get("selected", []) if isinstance(data, dict) else []
        if isinstance(data, dict) and not str(data.get("answer", "x")).strip():
            out.add("empty text")
    ids = [i for i in ids if isinstance(i, int)]
    if any(not 0 <= i < shown for i in ids):
        out.add("out-of-range ids")
    if len(ids) != len(set(ids)):
        out.add("duplicate ids")
    return out


def _reason(message: str) -> str:
    """An OutputRejected message, without its positions and counts."""
    if message.startswith("not JSON"):
        return "not JSON: " + re.sub(r" at \d+.*", "", message.split("(", 1)[1])
    return re.sub(r"\d+", "N", message.split(": ", 1)[-1])[:80]


class _Refusals(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "refused" in record.getMessage()


def run(
    generations: int,
    chat: str | None = None,
    embedder: str | None = None,
    workdir: Path | None = None,
    seed: int = 0,
    models: int = 4,
) -> dict[str, Any]:
    """Drive both agents `generations` times in all; returns the distribution and any failures."""
    import random

    from memr1 import LlamaEmbedder, Memory, ModelOutputError
    from memr1.llm import LlamaCpp
    from memr1.tiny_models import write_chat_model, write_embedding_model

    class Recording(LlamaCpp):
        """The real backend, keeping every raw generation it was asked to parse (refused ones too)."""

        def generate(self, request):
            self.sent.append(request.messages)
            out = super().generate(request)
            self.raw.append(out.text)
            return out

    tmp = Path(workdir or tempfile.mkdtemp(prefix="memr1-hostile-"))
    # weight seeds differ in what they favour: seeds 1, 3 and 5, for instance, repeat small ids
    chats = [chat] if chat else [str(write_chat_model(tmp / f"chat-{k}.gguf", seed=k)) for k in range(models)]
    embedder = embedder or str(write_embedding_model(tmp / "embed.gguf", dim=32, seed=0))
    agents = {
        (role, k): Recording(path, retries=0, slot=f"hostile-{role}-{k}", n_threads=1)
        for role in ("manager", "answerer")
        for k, path in enumerate(chats)
    }
    for agent in agents.values():
        agent.raw, agent.sent = [], []
    refusals = _Refusals()
    logging.getLogger("memr1").addHandler(refusals)
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    traits: dict[str, Counter[str]] = {}
    failures: list[str] = []
    started = time.perf_counter()
    try:
        with Memory(tmp / f"hostile-{seed}.db", embedder=LlamaEmbedder(embedder, n_threads=1)) as mem:
            bystander = mem.add("a bystander's fact about a dog", user="bystander")

            def state() -> tuple:
                q = mem.store.query
                return (
                    tuple(q("SELECT id, user_id, text, updated_at FROM memories ORDER BY id")),
                    q("SELECT count(*) FROM history")[0][0],
                    q("SELECT count(*) FROM turns")[0][0],
                )

            for i in range(generations):
                role, model = ("manager" if i % 2 == 0 else "answerer"), (i // 2) % len(chats)
                label, temperature, cap = SETTINGS[(i // 2 // len(chats)) % len(SETTINGS)]
                llm = mem._manager = mem._answerer = agents[(role, model)]
                llm.seed, llm.temperature = seed * 100_003 + i, temperature
                llm.max_tokens = rng.randint(1, 40) if cap == "random" else None
                while len(mem.list(user="u")) < 6:
                    mem.add(f"Andrew likes {rng.choice(TOPICS)} ({rng.randrange(10**6)})", user="u")
                text = f"I talk about {rng.choice(TOPICS)} and {rng.choice(TOPICS)} (turn {i})"
                before = state()
                shown_ids = [
                    h.memory.id for h in mem.search(text, mem.related_k if role == "manager" else 60, user="u")
                ]
                key = f"{role}/{label}"
                try:
                    if role == "manager":
                        ops = mem.observe(text, speaker="Andrew", user="u")
                        touched = {o.memory_id for o in ops if o.kind in ("UPDATE", "DELETE")}
                        if not touched <= set(shown_ids):
                            failures.append(f"#{i}: ops touched {touched - set(shown_ids)}, which were not shown")
                        applied = sum(o.kind in ("ADD", "UPDATE", "DELETE") for o in ops)
                        if state()[1] - before[1] != applied or state()[2] != before[2] + 1:
                            failures.append(f"#{i}: {applied} ops returned but the bank changed otherwise")
                    else:
                        answer = mem.ask(
                            text.replace("I talk about", "What about") + "?", user="u", sources="memories"
                        )  # shown_ids counts memories only
                        if not {m.id for m in answer.selected} <= set(shown_ids) or state() != before:
                            failures.append(f"#{i}: ask selected unshown memories or changed the bank")
                    outcome = "valid"
                except ModelOutputError as e:
                    outcome = "refused"
                    why = getattr(e, "reasons", None)  # older memr1 gave only the message
                    reasons[f"{role}: {_reason(why[-1]) if why else str(e)[:80]}"] += 1
                    if state() != before:
                        failures.append(f"#{i}: refused, but the bank changed")
                except Exception as e:
                    outcome = "exception"
                    failures.append(f"#{i} ({key}): {type(e).__name__} reached the caller: {str(e)[:200]}")
                outcomes[f"{key}: {outcome}"] += 1
                raw = llm.raw[-1] if llm.raw else ""
                for trait in features(raw, role, len(shown_ids)) or {"clean"}:
                    traits.setdefault(trait, Counter())[outcome] += 1
            if mem.get(bystander.id).text != "a bystander's fact about a dog":
                failures.append("the bystander's memory changed")
            failures += mem.check()
    finally:
        logging.getLogger("memr1").removeHandler(refusals)
    refused = sum(n for k, n in outcomes.items() if k.endswith("refused"))
    if refusals.count != refused:
        failures.append(f"{refused} refusals but {refusals.count} refusal log records")
    generated = sum(len(a.raw) for a in agents.values())
    return {
        "generations": generated,
        "calls": generations,
        "seconds": time.perf_counter() - started,
        "valid": sum(n for k, n in outcomes.items() if k.endswith("valid")),
        "refused": refused,
        "exceptions": sum(n for k, n in outcomes.items() if k.endswith("exception")),
        "outcomes": dict(sorted(outcomes.items())),
        "refusal_reasons": dict(reasons.most_common()),
        "traits": {t: dict(c) for t, c in sorted(traits.items())},
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generations", type=int, default=1000, help="calls in all, half per agent")
    parser.add_argument("--model", help="chat GGUF (default: tiny random-weight ones written locally)")
    parser.add_argument("--models", type=int, default=4, help="how many tiny chat models, one per weight seed")
    parser.add_argument("--embedder", help="embedding GGUF (default: a tiny one written locally)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    out = run(args.generations, args.model, args.embedder, seed=args.seed, models=args.models)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"{out['generations']} constrained generations ({out['calls']} calls) in {out['seconds']:.0f}s: "
            f"{out['valid']} valid, {out['refused']} refused, {out['exceptions']} exceptions"
        )
        for name, n in out["outcomes"].items():
            print(f"  {name:<28} {n}")
        print("refusal reasons (last attempt):")
        for reason, n in out["refusal_reasons"].items():
            print(f"  {n:>5}  {reason}")
        print("hostile traits in the raw outputs (valid / refused):")
        for trait, counts in out["traits"].items():
            print(f"  {trait:<24} {counts.get('valid', 0):>5} / {counts.get('refused', 0):>5}")
        print(f"failures: {len(out['failures'])}")
        for failure in out["failures"][:20]:
            print(f"  {failure}")
    sys.exit(1 if out["failures"] else 0)


if __name__ == "__main__":
    main()
