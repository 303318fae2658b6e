"""Rewards for GRPO, as TRL reward functions: `reward(prompts, completions, example, **kwargs) -> list[float]`.

`example` is the dataset column holding each prompt's example (finetune.data), as JSON.
Completions come as text, or as chat messages when the prompts are conversational; both are read.

Answer Agent (`AnswerReward`): the completion is parsed by `memr1.prompts.parse_answer`, as at
inference, and its answer is scored against the gold answer by exact match after normalisation,
Memory-R1's reward (`memr1.scoring.exact_match`). Options:
- `metric="f1"` scores with the benchmark's official LoCoMo F1 instead (partial credit);
- `format_weight=w` gives parseable output w and scales the answer score into the rest:
  reward = w + (1 - w) * score. With w = 0 (the default) it is plain EM, as in the paper.
Unparseable output scores 0 either way.

Memory Manager (`ManagerReward`): the completion is parsed by `memr1.prompts.parse_manager`; its
operations are applied to a fresh copy of the example's bank (a real memr1 bank in a temporary
SQLite file) through `Memory.apply`, the call `observe` makes, and each related question is asked through `Memory.ask` by a frozen Answer Agent.
The reward is the mean exact match (or F1) of those answers. Unparseable output scores 0.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from memr1 import Memory, MemR1Error, Turn, prompts, scoring
from memr1.bank import DEFAULT_USER
from memr1.embedding import Embedder
from memr1.llm import LLM

from .data import AnswerExample, CachedEmbedder, ManagerExample, Question, shown

log = logging.getLogger("finetune.rewards")
Metric = Literal["em", "f1"]


def completion_text(completion: str | Sequence[dict[str, str]]) -> str:
    """The generated text: a plain completion, or the assistant message of a conversational one."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role", "assistant") == "assistant")


def score(prediction: str, gold: str, category: int, metric: Metric) -> float:
    if metric == "em":
        return scoring.exact_match(prediction, gold)
    return scoring.locomo_f1(prediction, gold, category)


class AnswerReward:
    """Exact match (or F1) of the Answer Agent's parsed answer; 0 when the output does not parse."""

    def __init__(self, metric: Metric = "em", format_weight: float = 0.0) -> None:
        if metric not in ("em", "f1") or not 0.0 <= format_weight < 1.0:
            raise ValueError(f"metric must be em or f1 and format_weight in [0, 1), not {metric!r}, {format_weight}")
        self.metric, self.format_weight = metric, format_weight

    def predict(self, completion: str | Sequence[dict[str, str]], example: AnswerExample) -> str | None:
        """The answer the SDK would return for this output, or None when it would reject it."""
        parse = prompts.parse_answer if example.distill else prompts.parse_direct_answer
        try:
            text, _ = parse(completion_text(completion), shown(example.memories), [m.id for m in example.memories])
        except prompts.OutputRejected:
            return None
        return text

    def score(self, completion: str | Sequence[dict[str, str]], example: AnswerExample) -> float:
        prediction = self.predict(completion, example)
        if prediction is None:
            return 0.0
        return self.format_weight + (1 - self.format_weight) * score(
            prediction, example.answer, example.category, self.metric
        )

    def __call__(self, prompts: list[Any], completions: list[Any], example: list[str], **kwargs: Any) -> list[float]:
        return [self.score(c, AnswerExample.model_validate_json(e)) for c, e in zip(completions, example, strict=True)]


class ManagerReward:
    """Mean exact match (or F1) of a frozen Answer Agent on the bank after the manager's operations."""

    def __init__(self, answerer: LLM, embedder: str | Path | Embedder, metric: Metric = "em", k: int = 60) -> None:
        if metric not in ("em", "f1"):
            raise ValueError(f"metric must be em or f1, not {metric!r}")
        self.answerer, self.metric, self.k = answerer, metric, k
        # every completion of a group rebuilds the same bank: its vectors are computed once
        self.embedder = embedder if isinstance(embedder, Embedder) else CachedEmbedder(embedder)

    def predict(self, completion: str | Sequence[dict[str, str]], example: ManagerExample) -> list[str] | None:
        """The frozen agent's answer to each related question after the operations; None when they don't parse."""
        try:
            plan = prompts.parse_manager(
                completion_text(completion),
                shown(example.related),
                [m.id for m in example.related],
                turn=example.text,
                speaker=example.speaker,
                at=example.at,
            )
        except prompts.OutputRejected:
            return None
        turn = Turn(
            text=example.text, speaker=example.speaker, at=example.at, session=example.session, user=DEFAULT_USER
        )
        with tempfile.TemporaryDirectory(prefix="memr1-reward-") as tmp:
            with Memory(Path(tmp) / "bank.db", embedder=self.embedder, answerer=self.answerer) as mem:
                added = {m.id: mem.add(m.text, at=m.at) for m in example.bank}
                # the decision is applied as observe applies it: same transaction, same times, same checks
                ids = {old: item.id for old, item in added.items()}
                mem.apply(plan.remap(ids), turn, shown=[added[m.id] for m in example.related])
                return [self._ask(mem, q, example) for q in example.questions]

    def _ask(self, mem: Memory, question: Question, example: ManagerExample) -> str:
        try:
            return mem.ask(
                question.question, k=self.k, now=example.asked_on, sources="memories"
            ).text  # the manager's bank
        except MemR1Error as e:  # the frozen agent's failure, not the manager's: this question scores 0
            log.warning("frozen answer agent failed on %r: %s", question.question, e)
            return ""

    def score(self, completion: str | Sequence[dict[str, str]], example: ManagerExample) -> float:
        predictions = self.predict(completion, example)
        if predictions is None or not example.questions:
            return 0.0
        return statistics.fmean(
            score(p, q.answer, q.category, self.metric) for p, q in zip(predictions, example.questions, strict=True)
        )

    def __call__(self, prompts: list[Any], completions: list[Any], example: list[str], **kwargs: Any) -> list[float]:
        return [self.score(c, ManagerExample.model_validate_json(e)) for c, e in zip(completions, example, strict=True)]
