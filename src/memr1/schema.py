"""Pydantic models at the API boundary, and the validators that guard every write."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInput

MAX_TEXT_CHARS = 65_536  # a memory is a fact, not a document; bigger input is almost always a bug
MAX_USER_CHARS = 256
MAX_LABEL_CHARS = 256  # speaker and session names
MAX_METADATA_BYTES = 65_536
MAX_METADATA_DEPTH = 32  # SQLite's JSON functions call nesting past 1,000 malformed, which breaks every filtered query
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # SQLite integers; Python's are unbounded
METADATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")  # allow-list: keys reach json_extract paths
OpKind = Literal["ADD", "UPDATE", "DELETE", "NOOP"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MemoryItem(_Model):
    id: int
    text: str
    user: str
    at: datetime | None = None  # when the fact was said, as the conversation dated it
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, Any] = Field(default_factory=dict)
    source_turns: list[int] = Field(default_factory=list)


class Hit(_Model):
    memory: MemoryItem
    score: float  # the fused rank score (retrieval.Tuning): higher is better, comparable within one search
    vector_score: float | None = None  # cosine similarity, when the vector search found it
    text_score: float | None = None  # -bm25 (higher is better), when the word search found it


class HistoryEntry(_Model):
    id: int
    memory_id: int
    user: str
    kind: Literal["ADD", "UPDATE", "DELETE"]
    before: str | None
    after: str | None
    changed_at: datetime
    actor: str
    turn_id: int | None = None


class Operation(_Model):
    kind: OpKind
    memory_id: int | None = None
    text: str | None = None
    previous: str | None = None


class Answer(_Model):
    text: str
    selected: list[MemoryItem] = Field(default_factory=list)  # the memories the agent distilled
    selected_turns: list[StoredTurn] = Field(default_factory=list)  # the raw turns it distilled
    retrieved: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0
    seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Turn(_Model):
    text: str
    speaker: str | None = None
    at: datetime | None = None
    session: str | None = None
    user: str = "default"
    metadata: dict[str, Any] = Field(default_factory=dict)


class StoredTurn(Turn):
    """A raw dialogue turn as the bank keeps it: what `ask(sources="turns"|"both")` reads and cites."""

    id: int


# ---- validators: each raises InvalidInput with a message a user can act on ----


def _unicode(text: str, what: str) -> str:
    """Lone surrogates (from surrogateescape'd argv or a JSON '\\ud800') cannot be stored or embedded as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} contains a lone surrogate code point and is not valid Unicode text") from None
    return text


def check_text(text: object, what: str = "text") -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput(f"{what} must not be empty")
    if "\x00" in text:
        raise InvalidInput(f"{what} must not contain NUL characters")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{what} is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    return _unicode(text, what).strip()


def check_user(user: object) -> str:
    if not isinstance(user, str) or not user.strip():
        raise InvalidInput(f"user must be a non-empty str, got {user!r}"[:200])
    if "\x00" in user or len(user) > MAX_USER_CHARS:
        raise InvalidInput(f"user must be at most {MAX_USER_CHARS} characters, without NUL")
    return _unicode(user, "user")


def check_label(value: object, what: str) -> str | None:
    """A speaker or session name: optional, short, printable text."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a str or None, got {type(value).__name__}")
    if "\x00" in value or len(value) > MAX_LABEL_CHARS:
        raise InvalidInput(f"{what} must be at most {MAX_LABEL_CHARS} characters, without NUL")
    return _unicode(value, what)


def check_id(memory_id: object) -> int:
    if isinstance(memory_id, bool) or not isinstance(memory_id, int) or not 1 <= memory_id <= INT64_MAX:
        raise InvalidInput(f"memory id must be a positive int, got {memory_id!r}"[:200])
    return memory_id


def check_key(key: object) -> str:
    if not isinstance(key, str) or not METADATA_KEY.match(key):
        raise InvalidInput(f"metadata key {key!r} is not allowed; use letters, digits, _ . - (max 64)"[:200])
    return key


def check_metadata(metadata: object) -> dict[str, Any]:
    """A dict that survives a JSON round trip unchanged, and that SQLite's JSON functions can always read."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a dict, got {type(metadata).__name__}")
    for key in metadata:
        check_key(key)
    _check_json(metadata, "metadata")
    size = len(json.dumps(metadata, ensure_ascii=False).encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidInput(f"metadata is {size:,} bytes as JSON; the limit is {MAX_METADATA_BYTES:,}")
    return dict(metadata)


def _check_json(value: object, where: str, depth: int = 0) -> None:
    """Walk a JSON value without recursing past MAX_METADATA_DEPTH (json.dumps would raise RecursionError)."""
    if depth > MAX_METADATA_DEPTH:
        raise InvalidInput(f"{where} nests deeper than {MAX_METADATA_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidInput(f"{where} is an integer outside SQLite's 64-bit range")
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InvalidInput(f"{where} must be a finite number, not {value}")
    elif isinstance(value, str):
        _unicode(value, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):  # json.dumps would turn 1 into "1": the data would not round-trip
                raise InvalidInput(f"{where} has a {type(key).__name__} key {key!r}; JSON object keys are strings")
            _unicode(key, f"a key in {where}")
            _check_json(item, f"{where}.{key}"[:200], depth + 1)
    else:
        raise InvalidInput(
            f"{where} must be JSON (dict, list, str, int, float, bool or None), not {type(value).__name__}"
        )


_LOCOMO_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y")


def parse_time(value: object, what: str = "at") -> datetime | None:
    """Accept datetimes, dates, ISO 8601 and LoCoMo's "1:56 pm on 8 May, 2023"."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str) and value.strip() and len(value) <= 64:
        text = value.strip()
        try:
            return datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
        for fmt in _LOCOMO_FORMATS:
            try:
                return datetime.strptime(text, fmt)
            except ValueError:
                continue
    raise InvalidInput(f"{what} must be a datetime or an ISO 8601 string, got {value!r}"[:200])


def timestamp(moment: datetime) -> float:
    """Seconds since the epoch; naive times are read as UTC so ordering is stable."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
