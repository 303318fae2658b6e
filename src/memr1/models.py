"""Turn a model reference into a local GGUF file, and vet the file before llama.cpp loads it in process.

A reference is a local path, or `owner/repo/path/in/repo.gguf` (optionally `hf://`-prefixed)
on the Hugging Face hub. Either may end in `@sha256:<hex>` to pin the exact file.

llama.cpp answers many malformed files (a repeated vocabulary entry, an out-of-range layer count,
an unknown pooling type, a tensor of an unexpected type, ...) with abort(), which would take the
whole application down. So a file is first read by gguf-py (truncation and the commonest defects,
with a precise message), then loaded and run once in a throwaway process (`probe`): only a file
that survived both reaches llama.cpp in this process. A probe's verdict is remembered on disk, per
file identity and machine fingerprint (CPU features, kernel, llama.cpp build), so each file costs one
probe per machine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import cache_dir, probe_enabled
from .errors import ModelNotAvailable

log = logging.getLogger("memr1.models")

_PIN = re.compile(r"^(?P<ref>.+?)@sha256:(?P<digest>[0-9a-fA-F]{64})$")
_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_verified: dict[tuple[int, ...], str] = {}
_HUB_RETRY_AFTER_S = 60.0
_hub_failed_at: float | None = None  # after a network failure, don't make every model wait out the retries
_verified_lock = threading.Lock()
_probed: dict[tuple[object, ...], bool] = {}  # file identity -> may use extra buffer types
MAX_CONTEXT = 1 << 24  # 16M tokens: beyond any model's training; larger values are corruption
_ABORT = re.compile(r"\.(?:c|cc|cpp|h):\d+: ")
PROBE_SECONDS = (60.0, 30.0)  # + per GB: reading a big model from a cold disk is slow; past that it hangs


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
    if not isinstance(raw, str) or not raw.strip() or "\x00" in raw:
        raise ModelNotAvailable(f"a model reference must be a non-empty path or owner/repo/file.gguf, got {raw!r}")
    text, digest = raw, None
    if match := _PIN.match(raw):
        text, digest = match["ref"], match["digest"].lower()
    elif "@sha256:" in raw:  # a typo in a pin must not silently turn into an unpinned load
        raise ModelNotAvailable(f"model {raw!r}: a pin is @sha256: followed by 64 hex digits")
    local = Path(text).expanduser()
    if text.startswith("hf://") or (not local.exists() and _looks_like_hub(text)):
        parts = text.removeprefix("hf://").split("/")
        return ModelRef(raw, repo_id="/".join(parts[:2]), filename="/".join(parts[2:]), sha256=digest)
    return ModelRef(raw, path=local, sha256=digest)


def _looks_like_hub(text: str) -> bool:
    parts = text.split("/")
    return len(parts) >= 3 and not text.startswith((".", "/", "~")) and all(parts)


def resolve(ref: str | os.PathLike[str], *, sha256: str | None = None, download: bool = True) -> Path:
    """Return a local file for `ref`: the path itself, or the hub's cache (downloading if `download`).

    A pin, `ref@sha256:<hex>` or `sha256=`, is checked before the file is returned: a mismatch refuses it.
    """
    parsed = parse_ref(ref)
    pin = parsed.sha256
    if sha256 is not None:
        if not isinstance(sha256, str) or not _DIGEST.match(sha256):
            raise ModelNotAvailable(f"sha256 pin for {parsed.label!r} must be 64 hex digits, got {sha256!r}")
        if pin is not None and pin != sha256.lower():
            raise ModelNotAvailable(f"model {parsed.label!r} is pinned to two different sha256 digests")
        pin = sha256.lower()
    path = parsed.path if parsed.path is not None else _from_hub(parsed, download=download)
    if not path.is_file():
        raise ModelNotAvailable(f"model {parsed.label!r}: no such file")
    if pin:
        _check_digest(path, pin, parsed.label)
    return path


def file_identity(path: Path) -> tuple[int, ...]:
    """Changes whenever the file does: ctime cannot be set back by a user, unlike mtime."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _from_hub(ref: ModelRef, *, download: bool = True) -> Path:
    from huggingface_hub import hf_hub_download

    assert ref.repo_id and ref.filename
    try:  # the cache first: no network round-trip when the file is already here
        return Path(hf_hub_download(ref.repo_id, ref.filename, local_files_only=True))
    except Exception:
        pass
    if not download:
        raise ModelNotAvailable(f"model {ref.label!r} is not in the local Hugging Face cache")
    global _hub_failed_at
    if _hub_failed_at is not None and time.monotonic() - _hub_failed_at < _HUB_RETRY_AFTER_S:
        raise ModelNotAvailable(
            f"model {ref.label!r} is not in the Hugging Face cache and the hub was unreachable "
            f"moments ago; pass a local .gguf path or retry later"
        )
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
    key = file_identity(path)
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
    """Read scalar metadata (architecture, name, sizes) without loading tensors.

    The file is checked first (see `_check_gguf`): llama.cpp aborts the whole process on some
    malformed files instead of returning an error, so they must never reach it.
    """
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:
        raise ModelNotAvailable(f"{path} is not a readable GGUF file: {type(e).__name__}: {e}") from None
    try:
        problem = _check_gguf(reader, path.stat().st_size)
    except Exception as e:  # a field of an unexpected type or shape is a malformed file too
        problem = f"{type(e).__name__}: {e}"
    if problem:
        raise ModelNotAvailable(f"{path} is a malformed GGUF file ({problem}); refusing to load it")
    out: dict[str, object] = {}
    for name, fld in reader.fields.items():
        if len(fld.types) == 1:  # scalars and strings; skip arrays such as the vocabulary
            try:
                out[name] = fld.contents()
            except Exception:
                continue
    return out


def _check_gguf(reader: Any, size: int) -> str | None:
    """Defects gguf-py sees cheaply, named precisely; llama.cpp aborts on the second (the probe catches the rest)."""
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            return f"tensor {tensor.name!r} runs past the end of the file: truncated"
    arch = reader.fields.get("general.architecture")
    context = reader.fields.get(f"{arch.contents()}.context_length") if arch is not None else None
    if context is not None and not 0 < int(context.contents()) <= MAX_CONTEXT:
        return f"a context length of {context.contents()} tokens"  # 2^31: llama.cpp takes minutes to load it
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is not None:
        pieces = [bytes(tokens.parts[i]) for i in tokens.data]
        if len(set(pieces)) != len(pieces):  # GGML_ASSERT(id_to_token.size() == token_to_id.size())
            return "the vocabulary repeats a token"
    return None


# ---- the probe: llama.cpp loads and runs the file once, in a process of its own ----

_PROBE = """
import sys
from pathlib import Path
from memr1.runtime import open_llama
path, embedding, extra_bufts = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
llm = open_llama(path, extra_bufts=extra_bufts, embedding=embedding, n_ctx=64, n_batch=64, n_ubatch=64,
                 n_threads=1, n_threads_batch=1, n_gpu_layers=0, verbose=True)
if embedding:
    llm.embed("memr1 probe text")
else:
    llm.eval(llm.tokenize(b"memr1 probe text", add_bos=True, special=False)[:8])
"""


def probe(path: Path, *, embedding: bool) -> bool:
    """Refuse a file that crashes or hangs llama.cpp, by loading it (and computing once) in a child process.

    Returns whether llama.cpp's extra buffer types may be used. A CPU that advertises instructions its VM
    does not enable (AMX) dies with SIGILL in the kernels those buffer types select for quantized weights;
    such a file is probed again without them, and that is how it is loaded from then on.
    """
    key = (*file_identity(path), embedding)
    if key in _probed:
        return _probed[key]
    if not probe_enabled() or getattr(sys, "frozen", False) or not sys.executable:
        return True  # MEMR1_PROBE=0 trusts every file; a frozen app has no interpreter to run the probe with
    marker = _marker(path, key)
    if marker is not None and (known := _read_marker(marker)) is not None:
        _probed[key] = known
        return known
    done = _run_probe(path, embedding=embedding, extra_bufts=True)
    extra_bufts = True
    if done.returncode == -signal.SIGILL:
        log.warning("llama.cpp died with SIGILL on %s; probing again without extra buffer types", path)
        extra_bufts, first = False, done
        done = _run_probe(path, embedding=embedding, extra_bufts=False)
        if done.returncode != 0:
            done = first  # the first failure is the one that explains the file
    if done.returncode != 0:
        raise ModelNotAvailable(
            f"llama.cpp cannot load {path}: {_why(done)}; refusing it "
            "(MEMR1_PROBE=0 skips this check for files you trust)"
        )
    _probed[key] = extra_bufts
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"extra_bufts": extra_bufts, "file": str(path)}))
        except OSError:
            pass  # an unwritable cache only costs a probe next time
    return extra_bufts


def _run_probe(path: Path, *, embedding: bool, extra_bufts: bool) -> subprocess.CompletedProcess[str]:
    timeout = PROBE_SECONDS[0] + PROBE_SECONDS[1] * path.stat().st_size / 1e9
    try:
        # the child imports memr1 and llama_cpp from where this process did; no gdb backtrace on abort (slow, noisy)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "GGML_NO_BACKTRACE": "1"}
        argv = [sys.executable, "-c", _PROBE, str(path), "1" if embedding else "0", "1" if extra_bufts else "0"]
        return subprocess.run(argv, env=env, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ModelNotAvailable(
            f"llama.cpp did not load and run {path} within {timeout:.0f}s; "
            "refusing it (a malformed file can make it hang)"
        ) from None


def _why(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    said = next((line for line in lines if _ABORT.search(line)), None)  # ggml_abort's "file.cpp:123: why"
    said = said or next((line for line in reversed(lines) if "error" in line.lower()), None)
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return f"it crashed the probe process with {name}" + (f" ({said[-300:]})" if said else "")
    return (said or (lines[-1] if lines else f"exit status {done.returncode}"))[-300:]


def _read_marker(marker: Path) -> bool | None:
    try:
        return bool(json.loads(marker.read_text())["extra_bufts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, or written by an older memr1: probe again


@functools.lru_cache(maxsize=1)
def machine_fingerprint() -> str:
    """What a probe's verdict depends on besides the file: the CPU's features, the kernel that enables them,
    and the llama.cpp build. A home directory shared by machines of other kinds must not share verdicts."""
    import platform
    from importlib.metadata import version
    from importlib.util import find_spec

    parts: list[object] = [platform.machine(), platform.system(), platform.release(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            parts += sorted({line for line in f if line.startswith(("flags", "Features", "model name"))})
    except OSError:
        pass
    try:
        parts.append(version("llama-cpp-python"))
    except Exception:
        parts.append(None)
    spec = find_spec("llama_cpp")
    if spec and spec.origin:  # the compiled libraries: a rebuild with other flags changes them
        for lib in sorted(Path(spec.origin).parent.glob("lib/*")):
            with contextlib.suppress(OSError):
                parts.append((lib.name, *file_identity(lib)[2:4]))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _marker(path: Path, key: tuple[object, ...]) -> Path | None:
    """Where a probe's verdict is remembered: keyed by the file's identity and the machine's fingerprint."""
    name = hashlib.sha256(repr((str(path.resolve()), key, machine_fingerprint())).encode()).hexdigest()
    return cache_dir() / "probed" / name
