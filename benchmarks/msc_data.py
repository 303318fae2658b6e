"""Reading Multi-Session Chat (Xu et al., 2022) as memory papers use it: MemGPT's MSC-Self-Instruct.

Get it from https://huggingface.co/datasets/MemGPT/MSC-Self-Instruct (JSON lines, or a JSON
list). Each row holds earlier sessions in `previous_dialogs`, the current session in
`dialog`, and one memory probe in `self_instruct`: question `B`, gold answer `A`. The
original ParlAI MSC files (`msc_dialogue/session_N/*.txt`) have the same `previous_dialogs`
and `dialog` fields and no probe; they load too, with `question` left empty.

MSC dates its sessions only relative to each other (`time_num` `time_unit` since the one
before), so sessions are dated backwards from a fixed anchor; only the gaps mean anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.locomo_data import Turn

ANCHOR = datetime(2023, 1, 1, 12, 0)
_UNITS = {"minute": 1 / 1440, "hour": 1 / 24, "day": 1, "week": 7, "month": 30, "year": 365}
SPEAKERS = ("Speaker 1", "Speaker 2")


@dataclass(frozen=True)
class Episode:
    episode_id: str
    question: str
    answer: str
    turns: tuple[Turn, ...]  # previous sessions then the current one, in order
    personas: tuple[tuple[str, ...], ...]


def _gap(session: dict[str, Any]) -> timedelta:
    unit = str(session.get("time_unit", "day")).lower().rstrip("s")
    return timedelta(days=float(session.get("time_num", 0) or 0) * _UNITS.get(unit, 1))


def episode(raw: dict[str, Any], index: int) -> Episode:
    current = {"dialog": raw.get("dialog", []), "time_num": raw.get("time_num", 0), "time_unit": raw.get("time_unit")}
    sessions = [*raw.get("previous_dialogs", []), current]
    # each session's time_num says how long after the one before it took place (the first's is unused)
    dates, at = [], ANCHOR
    for s in reversed(sessions):
        dates.append(at)
        at -= _gap(s)
    dates.reverse()
    meta = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    eid = str(meta.get("initial_data_id") or f"msc-{index}")
    turns = []
    for n, (session, at) in enumerate(zip(sessions, dates), start=1):
        for j, message in enumerate(session["dialog"]):
            speaker = message.get("id") or SPEAKERS[j % 2]
            turns.append(Turn(eid, n, f"S{n}:{j}", speaker, message["text"], at))
    probe = raw.get("self_instruct") or {}
    personas = tuple(tuple(p) for p in raw.get("personas", []))
    return Episode(eid, str(probe.get("B", "")), str(probe.get("A", "")), tuple(turns), personas)


def load(path: str | Path) -> list[Episode]:
    text = Path(path).read_text(encoding="utf-8").strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.split("\n") if line.strip()]
    return [episode(raw, i) for i, raw in enumerate(rows)]
