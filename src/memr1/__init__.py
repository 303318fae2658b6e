"""memr1: long-term memory for LLM agents in one SQLite file."""

from . import prompts
from .agents import AnswerAgent, MemoryManager
from .bank import Bank
from .config import AgentConfig, Config
from .embedding import DEFAULT_EMBEDDER, Embedder, LlamaEmbedder, embedder_from_ref, register_embedder
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
from .llm import Backend, ChatBackend, Generation, LlamaCpp, OpenAICompatible, Request
from .memory import Memory
from .schema import Answer, HistoryEntry, Hit, MemoryItem, Operation, Turn

__all__ = [
    "DEFAULT_EMBEDDER",
    "AgentConfig",
    "Answer",
    "AnswerAgent",
    "Backend",
    "Bank",
    "ChatBackend",
    "Config",
    "Generation",
    "LlamaCpp",
    "MemoryManager",
    "OpenAICompatible",
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
    "Request",
    "Turn",
    "embedder_from_ref",
    "prompts",
    "register_embedder",
]
__version__ = "0.1.0"
