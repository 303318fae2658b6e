"""Text embeddings through llama.cpp, loaded lazily and once per process."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import ModelNotAvailable
from .llm import vet_chat_templates
from .models import parse_ref, resolve
from .runtime import check_threads, header, shared_llama, thread_count

# bge-small-en-v1.5 (BAAI, MIT): 384-d, 33M parameters, ~36 MB at Q8_0; strong for its size.
DEFAULT_EMBEDDER = "ChristianAzinn/bge-small-en-v1.5-gguf/bge-small-en-v1.5.Q8_0.gguf"
MAX_EMBED_CONTEXT = 8192  # tokens per text; longer texts are truncated


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to unit vectors of a fixed size can back a bank."""

    @property
    def identity(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class LlamaEmbedder:
    """A GGUF embedding model run in-process by llama-cpp-python.

    Resolving the file and reading its size is cheap and happens on first use of
    `dim`/`identity`; the weights load on the first `embed` call.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_EMBEDDER,
        *,
        n_threads: int | None = None,
        batch_size: int = 32,
        query_prefix: str = "",
        sha256: str | None = None,
        named_by: str | None = None,
    ) -> None:
        """`sha256` pins the file, as `model@sha256:<hex>` does: a mismatch refuses to load it.

        `n_threads` (default: $MEMR1_EMBEDDER_THREADS, $MEMR1_THREADS, else 1) is used for every batch.
        `named_by` says who chose the model when it was not the user (a bank file's record): such a model
        is used only from a local file or the local Hugging Face cache, never downloaded."""
        self.ref = os.fspath(model)
        self.sha256 = sha256
        self.named_by = named_by
        self.n_threads = check_threads(n_threads, "n_threads") if n_threads is not None else None
        self.batch_size = batch_size
        self.query_prefix = query_prefix
        self._path: Path | None = None
        self._meta: dict[str, object] | None = None
        self._vetted = False  # its chat templates, if any, compiled in a bounded child before the first load

    @property
    def path(self) -> Path:
        if self._path is None:
            try:
                self._path = resolve(self.ref, sha256=self.sha256, download=self.named_by is None)
            except ModelNotAvailable as e:
                if self.named_by is None:
                    raise
                raise ModelNotAvailable(
                    f"{e}. The embedder {self.ref!r} is named only by {self.named_by}, and memr1 does not download "
                    "a model that a bank file names. Choose the embedder: pass embedder= (a .gguf path or "
                    "owner/repo/file.gguf), set MEMR1_EMBEDDER, or use --embedder"
                ) from None
        return self._path

    def _metadata(self) -> dict[str, object]:
        if self._meta is None:
            meta = header(self.path)
            arch = meta.get("general.architecture")
            if f"{arch}.embedding_length" not in meta:
                raise ModelNotAvailable(f"{self.ref!r} is not an embedding model GGUF (no {arch}.embedding_length)")
            self._meta = meta
        return self._meta

    @property
    def dim(self) -> int:
        meta = self._metadata()
        return int(meta[f"{meta['general.architecture']}.embedding_length"])  # type: ignore[call-overload]

    @property
    def identity(self) -> str:
        name = self._metadata().get("general.name") or parse_ref(self.ref).label.rsplit("/", 1)[-1]
        return str(name)

    def _llama(self) -> tuple[Any, threading.Lock]:
        if not self._vetted:
            vet_chat_templates(self.path, self.ref)
            self._vetted = True
        ctx = int(self._metadata().get(f"{self._metadata()['general.architecture']}.context_length", 512))  # type: ignore[call-overload]
        ctx = min(ctx, MAX_EMBED_CONTEXT)  # one batch holds a whole text: bound its buffers
        return shared_llama(
            self.path,
            embedding=True,
            n_ctx=ctx,
            n_batch=ctx,
            n_ubatch=ctx,
            threads=thread_count("embedder", self.n_threads),
        )

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        """Unit-length float32 vectors, one row per text; long texts are truncated to the model's context."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        llm, lock = self._llama()
        inputs = [self.query_prefix + t if query else t for t in texts]
        rows: list[list[float]] = []
        with lock:
            for start in range(0, len(inputs), self.batch_size):
                rows.extend(llm.embed(inputs[start : start + self.batch_size], normalize=True, truncate=True))
        out = np.asarray(rows, dtype=np.float32)
        if out.shape != (len(texts), self.dim):
            raise ModelNotAvailable(f"{self.ref!r} returned vectors of shape {out.shape}, expected {self.dim}-d")
        return out
