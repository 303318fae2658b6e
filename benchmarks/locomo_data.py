"""Reading LoCoMo and the Memory-R1 split (adversarial removed; conv-26 train, conv-30 val, eight test)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo10.json"
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


@dataclass(frozen=True)
class Turn:
    conversation: str
    session: int
    dia_id: str
    speaker: str
    text: str
    at: datetime


def cache_dir() -> Path:
    """Where benchmarks keep downloads and embeddings: $MEMR1_CACHE, else ~/.cache/memr1."""
    root = os.environ.get("MEMR1_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "memr1"
    return Path(root)


def ensure_data(
    path: str | Path | None = None,
    *,
    url: str = LOCOMO_URL,
    sha256: str | None = LOCOMO_SHA256,
    cache: str | Path | None = None,
    timeout: float = 60.0,
) -> Path:
    """A local locomo10.json: `path` (default ../shared/data/locomo10.json) when it exists, else a cached download.

    The download goes to `cache` (default cache_dir()/locomo/) under a temporary name and is checked
    against `sha256` (None skips the check) and parsed before it takes the real name, so a cut or
    changed download never poses as the data set. `url` may be file:// for offline use.
    """
    path = Path(path) if path is not None else DEFAULT_DATA
    if path.exists():
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
        raise FileNotFoundError(f"{path} does not exist and {url} could not be fetched: {e}") from None
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
