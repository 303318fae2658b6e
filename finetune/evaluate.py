"""Score agent GGUFs on the validation examples through memr1's own inference path, and compare them.

    python -m finetune.evaluate --data runs/ft-data --k 18 --no-distill \\
        --model base=../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf --model trained=runs/export/answer.gguf \\
        --out runs/ft-smollm2/validation.json
    python -m finetune.evaluate --agent manager --data runs/ft-data --answerer ANSWERER.gguf \\
        --model base=BASE.gguf --model trained=MANAGER.gguf --out runs/ft-manager/validation.json

Answer Agent: each question goes to `memr1.agents.AnswerAgent.answer` on memr1's llama.cpp backend, as
`Memory.ask` does it: greedy (temperature 0), grammar-constrained, with the items ask showed for that
question (the example's first k, as finetune.data recorded them from `Memory.recall`).

Memory Manager: each turn goes to `memr1.agents.MemoryManager.decide` the same way, with the memories
observe showed for it; the decision is applied to a copy of the example's bank, and the questions whose
evidence is that turn are asked there by one frozen Answer Agent (`ManagerReward.predict`, the reward
training used). The operations per turn are counted too.

Scores are the benchmark's (LoCoMo F1, BLEU-1, exact match, x100). With two or more models, each one
after the first is compared with the first on the same questions: mean F1 difference and its paired
bootstrap 95% interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from memr1 import Turn, scoring
from memr1.agents import AnswerAgent, MemoryManager, Shown
from memr1.config import AgentConfig, chat_backend
from memr1.schema import MemoryItem

from . import data
from .rewards import ManagerReward

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

log = logging.getLogger("finetune.evaluate")


def answers(model: str, examples: Sequence[data.AnswerExample], *, threads: int | None = None) -> list[dict[str, Any]]:
    """One row per example: the answer memr1 gives with `model` as its Answer Agent, and its scores."""
    agent = AnswerAgent(chat_backend(AgentConfig(model=model, threads=threads), role="answerer"))
    rows = []
    for i, example in enumerate(examples):
        started = time.perf_counter()
        items = [Shown(m.id, m.text, m.at, m) for m in example.memories]  # as Memory.ask passes what recall found
        reply = agent.answer(example.question, items, now=example.asked_on, distill=example.distill)
        rows.append(
            {
                "question": example.question,
                "gold": example.answer,
                "category": example.category,
                "answer": reply.text,
                "f1": scoring.locomo_f1(reply.text, example.answer, example.category),
                "b1": scoring.bleu1(reply.text, example.answer),
                "em": scoring.exact_match(reply.text, example.answer),
                "prompt_tokens": reply.completion.prompt_tokens,
                "seconds": time.perf_counter() - started,
            }
        )
        log.info("%s %d/%d f1=%.2f %r", Path(model).name, i + 1, len(examples), rows[-1]["f1"], reply.text)
    return rows


def decisions(
    model: str, examples: Sequence[data.ManagerExample], reward: ManagerReward, *, threads: int | None = None
) -> list[dict[str, Any]]:
    """One row per question of each example: what the frozen Answer Agent answers after `model`, as memr1's
    Memory Manager (`MemoryManager.decide`: llama.cpp, greedy, grammar), decided on the turn. The first row
    of each example carries the decision's operations."""
    manager = MemoryManager(chat_backend(AgentConfig(model=model, threads=threads), role="manager"))
    rows = []
    for i, example in enumerate(examples):
        turn = Turn(text=example.text, speaker=example.speaker, at=example.at, session=example.session)
        related = [
            MemoryItem(id=m.id, text=m.text, user=turn.user, at=m.at, created_at=_EPOCH, updated_at=_EPOCH)
            for m in example.related
        ]
        started = time.perf_counter()
        decision = manager.decide(turn, related)
        ops = Counter(op.kind for op in decision.plan.ops)
        ops["NOOP"] += len(decision.plan.noops)
        answers = reward.predict(decision.completion.text, example) or [""] * len(example.questions)
        for j, (answer, question) in enumerate(zip(answers, example.questions, strict=True)):
            rows.append(
                {
                    "turn": example.dia_id,
                    "question": question.question,
                    "gold": question.answer,
                    "category": question.category,
                    "answer": answer,
                    "f1": scoring.locomo_f1(answer, question.answer, question.category),
                    "b1": scoring.bleu1(answer, question.answer),
                    "em": scoring.exact_match(answer, question.answer),
                    "prompt_tokens": decision.completion.prompt_tokens,
                    "ops": dict(ops) if j == 0 else {},
                    "seconds": time.perf_counter() - started,
                }
            )
        log.info("%s %d/%d %s", Path(model).name, i + 1, len(examples), dict(ops))
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {
        "count": len(rows),
        **{metric: 100 * statistics.fmean(r[metric] for r in rows) for metric in ("f1", "b1", "em")},
        "unknown": 100 * statistics.fmean(r["answer"] == "I don't know" for r in rows),
        "prompt_tokens": statistics.fmean(r["prompt_tokens"] for r in rows),
    }
    if rows and "ops" in rows[0]:  # a Memory Manager: its operations per decided turn
        turns = len({r["turn"] for r in rows})
        for kind in ("ADD", "UPDATE", "DELETE", "NOOP"):
            out[f"{kind.lower()}_per_turn"] = sum(r["ops"].get(kind, 0) for r in rows) / turns
    return out


def compare(
    models: dict[str, str],
    examples: Sequence[data.Example],
    *,
    threads: int | None = None,
    reward: ManagerReward | None = None,
) -> dict[str, Any]:
    """Answer Agents on answer examples; Memory Managers on manager examples, scored through `reward`."""
    if examples and isinstance(examples[0], data.ManagerExample):
        if reward is None:
            raise ValueError("scoring a Memory Manager needs a ManagerReward (its frozen Answer Agent)")
        managed = cast(Sequence[data.ManagerExample], examples)
        rows = {name: decisions(path, managed, reward, threads=threads) for name, path in models.items()}
    else:
        asked = cast(Sequence[data.AnswerExample], examples)
        rows = {name: answers(path, asked, threads=threads) for name, path in models.items()}
    first = next(iter(rows))
    result: dict[str, Any] = {"models": models, "summary": {name: summary(r) for name, r in rows.items()}}
    result["differences"] = {}
    for name in list(rows)[1:]:
        mean, low, high = scoring.paired_difference([r["f1"] for r in rows[name]], [r["f1"] for r in rows[first]])
        result["differences"][f"{name} - {first}"] = {"f1": 100 * mean, "low": 100 * low, "high": 100 * high}
    result["rows"] = rows
    return result


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m finetune.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="the examples written by python -m finetune.data")
    p.add_argument("--split", default="val")
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=GGUF",
        help="a model to score (repeat; the first is the baseline)",
    )
    p.add_argument("--agent", choices=data.AGENTS, default="answer")
    p.add_argument("--k", type=int, default=18, help="items shown per question (ask's k)")
    p.add_argument("--answerer", help="manager: the frozen Answer Agent's GGUF, the same for every manager")
    p.add_argument("--embedder", help="manager: the embedder of the banks the answers come from")
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=False, help="ask(distill=...)")
    p.add_argument("--limit", type=int, default=-1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    models = dict(m.partition("=")[::2] for m in args.model)
    if any(not path for path in models.values()):
        p.error("--model takes NAME=GGUF")
    reward = None
    if args.agent == "manager":
        from memr1.embedding import DEFAULT_EMBEDDER

        if not args.answerer:
            p.error("--agent manager needs --answerer GGUF (the frozen Answer Agent)")
        answerer = chat_backend(AgentConfig(model=args.answerer, threads=args.threads), role="frozen-answerer")
        reward = ManagerReward(answerer, args.embedder or DEFAULT_EMBEDDER, "f1", k=args.k)
        examples: list[Any] = data.load(args.data, args.split, "manager")
    else:
        examples = [e.as_asked(args.k, args.distill) for e in data.load(args.data, args.split, "answer")]
    if args.limit >= 0:
        examples = examples[: args.limit]
    result = compare(models, examples, threads=args.threads, reward=reward)
    result |= {"agent": args.agent, "split": args.split, "k": args.k, "distill": args.distill}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({"summary": result["summary"], "differences": result["differences"]}, indent=2))


if __name__ == "__main__":
    main()
