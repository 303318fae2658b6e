"""Domain exceptions. Everything memr1 raises on purpose derives from MemR1Error."""

from __future__ import annotations


class MemR1Error(Exception):
    """Base class: catch this to handle any memr1 failure."""


class InvalidInput(MemR1Error, ValueError):
    """An argument was rejected before anything was written."""


class MemoryNotFound(MemR1Error, KeyError):
    """No memory with that id exists (for that user, if one was given)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "memory not found"


class BankError(MemR1Error):
    """The bank file cannot be opened or used."""


class IncompatibleBank(BankError):
    """The bank was built with another embedder, or by a newer memr1."""


class BankBusy(BankError):
    """Contention: another writer held the bank past the busy timeout. Nothing was written; retry."""


class Conflict(BankBusy):
    """Concurrent writers kept changing the memories a decision was based on. Nothing was written; retry."""


class ExtensionUnavailable(BankError):
    """No SQLite driver that can load sqlite-vec was found."""


class ModelNotAvailable(MemR1Error):
    """A model could not be found, downloaded, verified against its pin, or loaded (corrupt or unsupported file)."""


class ModelOutputError(MemR1Error):
    """A model kept producing output that does not fit the schema; `reasons` says why, per attempt."""

    def __init__(self, message: str, *, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.reasons = reasons or []


class PromptTooLong(ModelOutputError):
    """The prompt does not fit the model's context; callers may retry with fewer memories."""

    def __init__(self, message: str, *, tokens: int, limit: int) -> None:
        super().__init__(message)
        self.tokens, self.limit = tokens, limit
