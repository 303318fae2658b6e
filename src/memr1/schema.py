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
    score: float  # reciprocal-rank fusion of the two lists below
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


# ---- validators: each raises InvalidInput with a message a user can act on ----


def check_text(text: object, what: str = "text") -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a str, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInput(f"{what} must not be empty")
    if "\x00" in text:
        raise InvalidInput(f"{what} must not contain NUL characters")
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInput(f"{what} is {len(text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
    return text.strip()


def check_user(user: object) -> str:
    if not isinstance(user, str) or not user.strip():
        raise InvalidInput(f"user must be a non-empty str, got {user!r}")
    if "\x00" in user or len(user) > MAX_USER_CHARS:
        raise InvalidInput(f"user must be at most {MAX_USER_CHARS} characters, without NUL")
    return user


def check_id(memory_id: object) -> int:
    if isinstance(memory_id, bool) or not isinstance(memory_id, int) or memory_id < 1:
        raise InvalidInput(f"memory id must be a positive int, got {memory_id!r}")
    return memory_id


def check_key(key: object) -> str:
    if not isinstance(key, str) or not METADATA_KEY.match(key):
        raise InvalidInput(f"metadata key {key!r} is not allowed; use letters, digits, _ . - (max 64)")
    return key


def check_metadata(metadata: object) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInput(f"metadata must be a dict, got {type(metadata).__name__}")
    for key in metadata:
        check_key(key)
    try:
        json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"metadata must be JSON-serialisable: {e}") from None
    return dict(metadata)


_LOCOMO_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y")


def parse_time(value: object, what: str = "at") -> datetime | None:
    """Accept datetimes, dates, ISO 8601 and LoCoMo's "1:56 pm on 8 May, 2023"."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str) and value.strip():
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
    raise InvalidInput(f"{what} must be a datetime or an ISO 8601 string, got {value!r}")


def timestamp(moment: datetime) -> float:
    """Seconds since the epoch; naive times are read as UTC so ordering is stable."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
