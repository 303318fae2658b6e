"""memr1: long-term memory for LLM agents in one SQLite file."""

from . import prompts
from .embedding import DEFAULT_EMBEDDER, Embedder, LlamaEmbedder
from .errors import (
    BankBusy,
    BankError,
    Conflict,
    ExtensionUnavailable,
    IncompatibleBank,
    InvalidInput,
    MemoryNotFound,
    MemR1Error,
    ModelNotAvailable,
    ModelOutputError,
    PromptTooLong,
)
from .memory import Memory
from .schema import Answer, HistoryEntry, Hit, MemoryItem, Operation, Turn

__all__ = [
    "DEFAULT_EMBEDDER",
    "Answer",
    "BankBusy",
    "BankError",
    "Conflict",
    "Embedder",
    "ExtensionUnavailable",
    "HistoryEntry",
    "Hit",
    "IncompatibleBank",
    "InvalidInput",
    "LlamaEmbedder",
    "Memory",
    "MemoryItem",
    "MemoryNotFound",
    "MemR1Error",
    "ModelNotAvailable",
    "ModelOutputError",
    "Operation",
    "PromptTooLong",
    "Turn",
    "prompts",
]
__version__ = "0.1.0"
