"""Turn a model reference into a local GGUF file; never loads weights.

A reference is a local path, or `owner/repo/path/in/repo.gguf` (optionally `hf://`-prefixed)
on the Hugging Face hub. Either may end in `@sha256:<hex>` to pin the exact file.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotAvailable

_PIN = re.compile(r"^(?P<ref>.+?)@sha256:(?P<digest>[0-9a-fA-F]{64})$")
_verified: dict[tuple[str, int, int], str] = {}
_HUB_RETRY_AFTER_S = 60.0
_hub_failed_at: float | None = None  # after a network failure, don't make every model wait out the retries
_verified_lock = threading.Lock()


@dataclass(frozen=True)
class ModelRef:
    raw: str
    path: Path | None = None
    repo_id: str | None = None
    filename: str | None = None
    sha256: str | None = None

    @property
    def label(self) -> str:
        return str(self.path) if self.path else f"{self.repo_id}/{self.filename}"


def parse_ref(ref: str | os.PathLike[str]) -> ModelRef:
    raw = os.fspath(ref)
    text, digest = raw, None
    if match := _PIN.match(raw):
        text, digest = match["ref"], match["digest"].lower()
    local = Path(text).expanduser()
    if text.startswith("hf://") or (not local.exists() and _looks_like_hub(text)):
        parts = text.removeprefix("hf://").split("/")
        return ModelRef(raw, repo_id="/".join(parts[:2]), filename="/".join(parts[2:]), sha256=digest)
    return ModelRef(raw, path=local, sha256=digest)


def _looks_like_hub(text: str) -> bool:
    parts = text.split("/")
    return len(parts) >= 3 and not text.startswith((".", "/", "~")) and all(parts)


def resolve(ref: str | os.PathLike[str]) -> Path:
    """Return a local file for `ref`: the path itself, or the hub's cache (downloading if allowed)."""
    parsed = parse_ref(ref)
    path = parsed.path if parsed.path is not None else _from_hub(parsed)
    if not path.is_file():
        raise ModelNotAvailable(f"model {parsed.label!r}: no such file")
    if parsed.sha256:
        _check_digest(path, parsed.sha256, parsed.label)
    return path


def _from_hub(ref: ModelRef) -> Path:
    from huggingface_hub import hf_hub_download

    assert ref.repo_id and ref.filename
    try:  # the cache first: no network round-trip when the file is already here
        return Path(hf_hub_download(ref.repo_id, ref.filename, local_files_only=True))
    except Exception:
        pass
    global _hub_failed_at
    if _hub_failed_at is not None and time.monotonic() - _hub_failed_at < _HUB_RETRY_AFTER_S:
        raise ModelNotAvailable(f"model {ref.label!r} is not in the Hugging Face cache and the hub was unreachable "
                                f"moments ago; pass a local .gguf path or retry later")  # fmt: skip
    try:
        return Path(hf_hub_download(ref.repo_id, ref.filename))
    except Exception as e:
        _hub_failed_at = time.monotonic()
        raise ModelNotAvailable(
            f"model {ref.label!r} is not in the Hugging Face cache and could not be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Check the network (HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN) or pass a local .gguf path."
        ) from None


def _check_digest(path: Path, expected: str, label: str) -> None:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _verified_lock:
        actual = _verified.get(key)
    if actual is None:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        actual = digest.hexdigest()
        with _verified_lock:
            _verified[key] = actual
    if actual != expected:
        raise ModelNotAvailable(f"model {label!r} has sha256 {actual}, not the pinned {expected}: refusing to load it")


def gguf_header(path: Path) -> dict[str, object]:
    """Read scalar metadata (architecture, name, sizes) without loading tensors."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:
        raise ModelNotAvailable(f"{path} is not a readable GGUF file: {type(e).__name__}: {e}") from None
    out: dict[str, object] = {}
    for name, fld in reader.fields.items():
        if len(fld.types) == 1:  # scalars and strings; skip arrays such as the vocabulary
            try:
                out[name] = fld.contents()
            except Exception:
                continue
    return out
