"""Reading LongMemEval (Wu et al., ICLR 2025): longmemeval_s.json, longmemeval_m.json, longmemeval_oracle.json.

Get the files from https://huggingface.co/datasets/xiaowu0162/longmemeval-cleaned (the
cleaned release, 2025/09) or the original links in https://github.com/xiaowu0162/LongMemEval.
Each of the 500 instances has its own haystack of dated user/assistant sessions and one
question asked on `question_date`; ids ending in `_abs` are abstention questions, whose
right answer is that the history does not say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.locomo_data import Turn

QUESTION_TYPES = (
    "single-session-user",
    "single-session-assistant",
    "single-session-preference",
    "temporal-reasoning",
    "knowledge-update",
    "multi-session",
)
_DATE_FORMATS = ("%Y/%m/%d (%a) %H:%M", "%Y/%m/%d %H:%M", "%Y/%m/%d")


@dataclass(frozen=True)
class Instance:
    question_id: str
    question_type: str
    question: str
    answer: str
    question_date: datetime | None
    turns: tuple[Turn, ...]  # every haystack turn, session by session, dated with its session
    evidence_sessions: tuple[str, ...]
    evidence_turns: tuple[str, ...]  # dia_ids of turns marked has_answer

    @property
    def abstention(self) -> bool:
        return self.question_id.endswith("_abs")


def parse_date(text: str | None) -> datetime | None:
    if not text:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    raise ValueError(f"unrecognised LongMemEval date {text!r}")


def instance(raw: dict[str, Any]) -> Instance:
    sessions, dates, ids = raw["haystack_sessions"], raw["haystack_dates"], raw["haystack_session_ids"]
    if not len(sessions) == len(dates) == len(ids):
        raise ValueError(f"{raw['question_id']}: haystack sessions, dates and ids differ in length")
    order = sorted(range(len(sessions)), key=lambda i: parse_date(dates[i]) or datetime.min)  # oracle is unsorted
    turns, evidence = [], []
    for n, i in enumerate(order, start=1):
        at = parse_date(dates[i]) or datetime.min
        for j, message in enumerate(sessions[i]):
            dia_id = f"{ids[i]}:{j}"
            turns.append(Turn(raw["question_id"], n, dia_id, message["role"], message["content"], at))
            if message.get("has_answer"):
                evidence.append(dia_id)
    return Instance(
        question_id=raw["question_id"],
        question_type=raw["question_type"],
        question=raw["question"],
        answer=str(raw["answer"]),
        question_date=parse_date(raw.get("question_date")),
        turns=tuple(turns),
        evidence_sessions=tuple(raw.get("answer_session_ids", ())),
        evidence_turns=tuple(evidence),
    )


def load(path: str | Path) -> list[Instance]:
    return [instance(raw) for raw in json.loads(Path(path).read_text(encoding="utf-8"))]
