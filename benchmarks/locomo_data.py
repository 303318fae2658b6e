"""Reading LoCoMo and the Memory-R1 split (adversarial removed; conv-26 train, conv-30 val, eight test)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

SPLITS = {"train": ("conv-26",), "val": ("conv-30",)}
_SESSION = re.compile(r"^session_(\d+)$")


@dataclass(frozen=True)
class QA:
    conversation: str
    question: str
    answer: str
    category: int
    evidence: tuple[str, ...]


@dataclass(frozen=True)
class Turn:
    conversation: str
    session: int
    dia_id: str
    speaker: str
    text: str
    at: datetime


def load(path: str | Path) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def split_of(sample_id: str) -> str:
    for name, ids in SPLITS.items():
        if sample_id in ids:
            return name
    return "test"


def questions(data: list[dict[str, Any]], split: str = "all", *, adversarial: bool = False) -> list[QA]:
    """QA pairs of a split; category 5 is dropped unless asked for, as Memory-R1 does."""
    out = []
    for sample in data:
        if split != "all" and split_of(sample["sample_id"]) != split:
            continue
        for qa in sample["qa"]:
            if qa["category"] == 5 and not adversarial:
                continue
            answer = qa.get("answer", qa.get("adversarial_answer", ""))
            out.append(
                QA(sample["sample_id"], qa["question"], str(answer), int(qa["category"]), tuple(qa.get("evidence", [])))
            )
    return out


def turns(sample: dict[str, Any]) -> list[Turn]:
    """Every turn in session order, dated with its session's date-time; a shared photo's caption is appended."""
    conv = sample["conversation"]
    sessions = sorted(int(m[1]) for key in conv if (m := _SESSION.match(key)))
    out = []
    for n in sessions:
        at = datetime.strptime(conv[f"session_{n}_date_time"], "%I:%M %p on %d %B, %Y")
        for turn in conv[f"session_{n}"]:
            text = turn["text"]
            if turn.get("blip_caption"):
                text += f" [shares a photo: {turn['blip_caption']}]"
            out.append(Turn(sample["sample_id"], n, turn["dia_id"], turn["speaker"], text, at))
    return out
