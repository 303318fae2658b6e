"""Text embeddings: llama.cpp's, loaded lazily and once per process, or any registered embedder.

A bank records the `ref` of the embedder that built it, so that it can be reopened without being told
again. A GGUF path or hub ref names a `LlamaEmbedder`; any other embedder is named by a ref
`scheme:rest` whose scheme was registered with `register_embedder`, or declared by an installed
package in the `memr1.embedders` entry-point group, so that `embedder_from_ref` can build it again.
"""

from __future__ import annotations

import inspect
import os
import re
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .errors import InvalidInput, ModelNotAvailable
from .llm import vet_chat_templates
from .models import parse_ref, resolve
from .runtime import check_threads, header, shared_llama, thread_count

# bge-small-en-v1.5 (BAAI, MIT): 384-d, 33M parameters, ~36 MB at Q8_0; strong for its size.
DEFAULT_EMBEDDER = "ChristianAzinn/bge-small-en-v1.5-gguf/bge-small-en-v1.5.Q8_0.gguf"
MAX_EMBED_CONTEXT = 8192  # tokens per text; longer texts are truncated


ENTRY_POINT_GROUP = "memr1.embedders"
# A scheme has two characters at least, so that a Windows drive (`C:\\model.gguf`) is read as a path.
# Hub refs and pinned files cannot match: a '/' or the '@' comes before the ':' of an `@sha256:` pin.
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]+):")
_LLAMA_SCHEMES = frozenset({"hf"})  # hf://owner/repo/file.gguf is a hub ref, read by LlamaEmbedder


@runtime_checkable
class Embedder(Protocol):
    """Anything that maps texts to unit vectors of a fixed size can back a bank.

    `query=True` marks search queries, for models that embed a question unlike the passage that answers
    it; an embedder that makes no such difference ignores it. An older embedder whose `embed` takes no
    `query` still works: call it through `embed_texts`. An embedder that has a `ref` (a string
    `embedder_from_ref` builds it again from) lets a bank it built be reopened without naming it again.
    """

    @property
    def identity(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray: ...


# Whether a class's embed takes `query`: a signature is read once per class, not on every search.
_TAKES_QUERY: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


def _takes_query(embedder: object) -> bool:
    cls = type(embedder)
    known = _TAKES_QUERY.get(cls)
    if known is None:
        try:
            params = inspect.signature(embedder.embed).parameters  # type: ignore[attr-defined]
        except (TypeError, ValueError):  # a builtin without a signature: call it the old way
            known = False
        else:
            kinds = {p.kind for p in params.values()}
            named = params.get("query")
            known = inspect.Parameter.VAR_KEYWORD in kinds or (
                named is not None and named.kind is not inspect.Parameter.POSITIONAL_ONLY
            )
        _TAKES_QUERY[cls] = known
    return known


def embed_texts(embedder: Embedder, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
    """The embedder's float32 vectors for `texts`, one row each, checked before they reach a bank.

    A bank stores the raw bytes of each row and searches them by dot product: a float64 row would be
    stored as twice as many dimensions, and one NaN would make every ranking that touches it undefined.
    """
    texts = list(texts)
    dim = embedder.dim
    if not texts:
        return np.zeros((0, dim), np.float32)
    out = embedder.embed(texts, query=query) if _takes_query(embedder) else embedder.embed(texts)
    name = getattr(embedder, "ref", None) or embedder.identity
    try:
        vectors = np.asarray(out)
    except (TypeError, ValueError) as e:  # ragged rows
        raise ModelNotAvailable(f"embedder {name!r} returned something that is not an array of vectors: {e}") from None
    if vectors.shape != (len(texts), dim):
        raise ModelNotAvailable(
            f"embedder {name!r} returned vectors of shape {vectors.shape} for {len(texts)} texts, "
            f"expected ({len(texts)}, {dim}): one {dim}-d row per text"
        )
    if vectors.dtype.kind not in "fiu":
        raise ModelNotAvailable(f"embedder {name!r} returned {vectors.dtype} vectors, expected real numbers")
    vectors = vectors.astype(np.float32, copy=False)
    if not np.isfinite(vectors).all():
        bad = int(np.flatnonzero(~np.isfinite(vectors).all(axis=1))[0])
        raise ModelNotAvailable(f"embedder {name!r} returned a vector with NaN or infinite values (text {bad})")
    return vectors


# ---- embedders named by a ref ----

_FACTORIES: dict[str, Callable[[str], Embedder]] = {}
_REGISTRY_LOCK = threading.Lock()


def register_embedder(scheme: str, factory: Callable[[str], Embedder]) -> None:
    """Make `embedder_from_ref("scheme:...")` return `factory("scheme:...")`, replacing an earlier factory.

    The factory gets the whole ref. It is also called with refs read from bank files, which anyone who
    could write the file chose: treat the text after the scheme as untrusted input."""
    if not isinstance(scheme, str) or not _SCHEME.fullmatch(scheme + ":"):
        raise InvalidInput(
            f"an embedder scheme is a lowercase letter then letters, digits, '+', '-' or '.', at least two "
            f"characters (one would read as a Windows drive), got {scheme!r}"
        )
    if scheme in _LLAMA_SCHEMES:
        raise InvalidInput(f"the scheme {scheme!r} names GGUF models on the Hugging Face hub; choose another")
    if not callable(factory):
        raise InvalidInput(f"an embedder factory must be callable, got {factory!r}")
    with _REGISTRY_LOCK:
        _FACTORIES[scheme] = factory


def _discover(scheme: str) -> Callable[[str], Embedder] | None:
    """The factory an installed package declares for `scheme`, imported now: plugins nobody uses cost nothing."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == scheme]
    if not found:
        return None
    providers = sorted({ep.value for ep in found})
    if len(providers) > 1:  # picking one by install order would make a bank's embedder depend on it
        raise ModelNotAvailable(
            f"several installed packages declare the embedder scheme {scheme!r} ({', '.join(providers)}); "
            "uninstall all but one, or choose one with memr1.embedding.register_embedder"
        )
    try:
        factory = found[0].load()
    except Exception as e:
        raise ModelNotAvailable(
            f"the embedder plugin {found[0].value!r} for scheme {scheme!r} failed to load: {e}"
        ) from e
    if not callable(factory):
        raise ModelNotAvailable(f"the embedder plugin {found[0].value!r} for scheme {scheme!r} is not callable")
    with _REGISTRY_LOCK:
        return _FACTORIES.setdefault(scheme, factory)


def _has_embedder_shape(obj: object) -> bool:
    # Read statically: isinstance(obj, Embedder) calls `dim` on Python < 3.12, which makes a LlamaEmbedder
    # resolve its file, and a factory's embedder should stay as lazy as it was built.
    for name in ("identity", "dim", "embed"):
        try:
            inspect.getattr_static(obj, name)
        except AttributeError:
            return False
    return callable(getattr(obj, "embed", None))


def embedder_from_ref(ref: str, *, n_threads: int | None = None, named_by: str | None = None) -> Embedder:
    """The embedder a ref names: a registered (or entry-point) scheme's, else a GGUF `LlamaEmbedder`.

    `n_threads` and `named_by` go to a LlamaEmbedder only (see its docstring); a factory decides for itself.
    A ref with an unknown scheme is refused rather than read as a file, unless that file exists."""
    if not isinstance(ref, str):
        raise ModelNotAvailable(f"an embedder ref must be a string, got {type(ref).__name__}")
    match = _SCHEME.match(ref)
    scheme = match[1] if match else None
    if scheme is None or scheme in _LLAMA_SCHEMES:
        return LlamaEmbedder(ref, n_threads=n_threads, named_by=named_by)
    factory = _FACTORIES.get(scheme) or _discover(scheme)
    if factory is None:
        if Path(ref.split("@sha256:", 1)[0]).expanduser().exists():  # a file whose name has a colon
            return LlamaEmbedder(ref, n_threads=n_threads, named_by=named_by)
        by = f", named by {named_by}," if named_by else ""
        raise ModelNotAvailable(
            f"no embedder is registered for the scheme {scheme!r} of {ref!r}{by} and no installed package "
            f"declares it. Call memr1.embedding.register_embedder({scheme!r}, factory) before opening the bank, "
            f"or install the package that provides it (an entry point named {scheme!r} in the group "
            f"{ENTRY_POINT_GROUP!r})"
        )
    try:
        embedder = factory(ref)
    except ModelNotAvailable:
        raise
    except Exception as e:
        raise ModelNotAvailable(f"the embedder factory for scheme {scheme!r} failed on {ref!r}: {e!r}") from e
    if not _has_embedder_shape(embedder):
        raise ModelNotAvailable(
            f"the embedder factory for scheme {scheme!r} returned {type(embedder).__name__}, which is not an "
            "Embedder (identity, dim and embed(texts, *, query=False))"
        )
    return embedder


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
