"""The evaluation data sets, read into dated turns: LoCoMo with the Memory-R1 split, LongMemEval and MSC.

`memr1 bench`, the benchmarks and the fine-tuning data builder all read them from here.

- **LoCoMo** (snap-research/locomo, `data/locomo10.json`): `ensure_locomo` finds or fetches the
  file, `load_locomo` reads it, `locomo_questions` and `locomo_turns` give a split's QA pairs and
  a conversation's turns. The Memory-R1 split: adversarial (category 5) removed, conv-26 train,
  conv-30 val, the other eight test.
- **LongMemEval** (Wu et al., ICLR 2025): `load_longmemeval` reads longmemeval_s.json,
  longmemeval_m.json or longmemeval_oracle.json. Get them from
  https://huggingface.co/datasets/xiaowu0162/longmemeval-cleaned (the cleaned release, 2025/09)
  or the original links in https://github.com/xiaowu0162/LongMemEval. Each of the 500 instances
  has its own haystack of dated user/assistant sessions and one question asked on
  `question_date`; ids ending in `_abs` are abstention questions, whose right answer is that the
  history does not say.
- **MSC** (Multi-Session Chat, Xu et al., 2022) as memory papers use it: `load_msc` reads MemGPT's
  MSC-Self-Instruct, from https://huggingface.co/datasets/MemGPT/MSC-Self-Instruct (JSON lines,
  or a JSON list). Each row holds earlier sessions in `previous_dialogs`, the current session in
  `dialog`, and one memory probe in `self_instruct`: question `B`, gold answer `A`. The original
  ParlAI MSC files (`msc_dialogue/session_N/*.txt`) have the same `previous_dialogs` and `dialog`
  fields and no probe; they load too, with `question` left empty. MSC dates its sessions only
  relative to each other (`time_num` `time_unit` since the one before), so sessions are dated
  backwards from a fixed anchor; only the gaps mean anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .config import cache_dir  # downloads and benchmark embeddings live beside the models' probe verdicts


@dataclass(frozen=True)
class Turn:
    """One utterance of a data set, dated with its session (not memr1.Turn, which is what observe() takes)."""

    conversation: str
    session: int
    dia_id: str
    speaker: str
    text: str
    at: datetime


def _beside_clone() -> Path | None:
    """../shared beside the clone memr1 runs from (src/memr1/ there), where the project keeps data and models.

    None when memr1 is installed from a wheel: its site-packages has nothing beside it.
    """
    root = Path(__file__).resolve().parents[2]
    return root.parent / "shared" if (root / "src" / "memr1").is_dir() and (root / "pyproject.toml").is_file() else None


SHARED = _beside_clone()


# ---- LoCoMo ----

DEFAULT_LOCOMO = SHARED / "data" / "locomo10.json" if SHARED else None
LOCOMO_URL = "https://raw.githubusercontent.com/snap-research/locomo/main/data/locomo10.json"
LOCOMO_SHA256 = "79fa87e90f04081343b8c8debecb80a9a6842b76a7aa537dc9fdf651ea698ff4"
SPLITS = {"train": ("conv-26",), "val": ("conv-30",)}
_SESSION = re.compile(r"^session_(\d+)$")


@dataclass(frozen=True)
class QA:
    conversation: str
    question: str
    answer: str
    category: int
    evidence: tuple[str, ...]


def ensure_locomo(
    path: str | Path | None = None,
    *,
    url: str = LOCOMO_URL,
    sha256: str | None = LOCOMO_SHA256,
    cache: str | Path | None = None,
    timeout: float = 60.0,
) -> Path:
    """A local locomo10.json: `path` (default: DEFAULT_LOCOMO) when it exists, else a cached download.

    The download goes to `cache` (default cache_dir()/locomo/) under a temporary name and is checked
    against `sha256` (None skips the check) and parsed before it takes the real name, so a cut or
    changed download never poses as the data set. `url` may be file:// for offline use.
    """
    path = Path(path) if path is not None else DEFAULT_LOCOMO
    if path is not None and path.exists():
        return path
    target = Path(cache) if cache is not None else cache_dir() / "locomo"
    target = target / Path(urllib.parse.urlsplit(url).path).name
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except (OSError, ValueError) as e:
        local = f"{path} does not exist" if path else "no local locomo10.json"
        raise FileNotFoundError(f"{local} and {url} could not be fetched: {e}") from None
    digest = hashlib.sha256(body).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ValueError(f"{url} has sha256 {digest}, expected {sha256}; refusing to use it")
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, list) or not all(isinstance(s, dict) and "sample_id" in s for s in data):
        raise ValueError(f"{url} is not LoCoMo data: expected a JSON list of samples with sample_id")
    partial = target.with_name(f"{target.name}.{os.getpid()}.part")
    partial.write_bytes(body)
    partial.replace(target)
    return target


def load_locomo(path: str | Path) -> list[dict[str, Any]]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def split_of(sample_id: str) -> str:
    """A LoCoMo conversation's Memory-R1 split: train, val or test."""
    for name, ids in SPLITS.items():
        if sample_id in ids:
            return name
    return "test"


def locomo_questions(data: list[dict[str, Any]], split: str = "all", *, adversarial: bool = False) -> list[QA]:
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


def locomo_turns(sample: dict[str, Any]) -> list[Turn]:
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


# ---- LongMemEval ----

LONGMEMEVAL_TYPES = (
    "single-session-user",
    "single-session-assistant",
    "single-session-preference",
    "temporal-reasoning",
    "knowledge-update",
    "multi-session",
)
_DATE_FORMATS = ("%Y/%m/%d (%a) %H:%M", "%Y/%m/%d %H:%M", "%Y/%m/%d")


@dataclass(frozen=True)
class LongMemEvalInstance:
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


def longmemeval_date(text: str | None) -> datetime | None:
    if not text:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
    raise ValueError(f"unrecognised LongMemEval date {text!r}")


def longmemeval_instance(raw: dict[str, Any]) -> LongMemEvalInstance:
    sessions, dates, ids = raw["haystack_sessions"], raw["haystack_dates"], raw["haystack_session_ids"]
    if not len(sessions) == len(dates) == len(ids):
        raise ValueError(f"{raw['question_id']}: haystack sessions, dates and ids differ in length")
    order = sorted(range(len(sessions)), key=lambda i: longmemeval_date(dates[i]) or datetime.min)  # oracle is unsorted
    turns, evidence = [], []
    for n, i in enumerate(order, start=1):
        at = longmemeval_date(dates[i]) or datetime.min
        for j, message in enumerate(sessions[i]):
            dia_id = f"{ids[i]}:{j}"
            turns.append(Turn(raw["question_id"], n, dia_id, message["role"], message["content"], at))
            if message.get("has_answer"):
                evidence.append(dia_id)
    return LongMemEvalInstance(
        question_id=raw["question_id"],
        question_type=raw["question_type"],
        question=raw["question"],
        answer=str(raw["answer"]),
        question_date=longmemeval_date(raw.get("question_date")),
        turns=tuple(turns),
        evidence_sessions=tuple(raw.get("answer_session_ids", ())),
        evidence_turns=tuple(evidence),
    )


def load_longmemeval(path: str | Path) -> list[LongMemEvalInstance]:
    return [longmemeval_instance(raw) for raw in json.loads(Path(path).read_text(encoding="utf-8"))]


# ---- MSC ----

MSC_ANCHOR = datetime(2023, 1, 1, 12, 0)
MSC_SPEAKERS = ("Speaker 1", "Speaker 2")
_UNITS = {"minute": 1 / 1440, "hour": 1 / 24, "day": 1, "week": 7, "month": 30, "year": 365}


@dataclass(frozen=True)
class MSCEpisode:
    episode_id: str
    question: str
    answer: str
    turns: tuple[Turn, ...]  # previous sessions then the current one, in order
    personas: tuple[tuple[str, ...], ...]


def _gap(session: dict[str, Any]) -> timedelta:
    unit = str(session.get("time_unit", "day")).lower().rstrip("s")
    return timedelta(days=float(session.get("time_num", 0) or 0) * _UNITS.get(unit, 1))


def msc_episode(raw: dict[str, Any], index: int) -> MSCEpisode:
    current = {"dialog": raw.get("dialog", []), "time_num": raw.get("time_num", 0), "time_unit": raw.get("time_unit")}
    sessions = [*raw.get("previous_dialogs", []), current]
    # each session's time_num says how long after the one before it took place (the first's is unused)
    dates, at = [], MSC_ANCHOR
    for s in reversed(sessions):
        dates.append(at)
        at -= _gap(s)
    dates.reverse()
    meta = raw["metadata"] if isinstance(raw.get("metadata"), dict) else {}
    eid = str(meta.get("initial_data_id") or f"msc-{index}")
    turns = []
    for n, (session, at) in enumerate(zip(sessions, dates), start=1):
        for j, message in enumerate(session["dialog"]):
            speaker = message.get("id") or MSC_SPEAKERS[j % 2]
            turns.append(Turn(eid, n, f"S{n}:{j}", speaker, message["text"], at))
    probe = raw.get("self_instruct") or {}
    personas = tuple(tuple(p) for p in raw.get("personas", []))
    return MSCEpisode(eid, str(probe.get("B", "")), str(probe.get("A", "")), tuple(turns), personas)


def load_msc(path: str | Path) -> list[MSCEpisode]:
    text = Path(path).read_text(encoding="utf-8").strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.split("\n") if line.strip()]
    return [msc_episode(raw, i) for i, raw in enumerate(rows)]
