"""llama.cpp in this process: thread counts, OpenMP's wait policy, and each model loaded once.

Two faults of a plain `Llama(...)` hit users on ordinary machines, so every llama.cpp context
memr1 creates goes through here:
- llama-cpp-python built with OpenMP lets idle threads spin. Two processes on 2 cores then steal
  each other's time slices: one 3 ms embedding took 1.1 s. A passive wait policy, set before
  llama.cpp is loaded, keeps it at 5 ms. `n_threads_batch` defaulted to every core, so contexts
  oversubscribed the machine even with one thread asked for; memr1 sets both counts.
- Some CPUs advertise instructions (AMX) that their VM does not enable. llama.cpp routes quantized
  weights to those kernels through "extra buffer types", and the first matrix multiply dies with
  SIGILL. The probe (models.py) detects this and the model is then loaded with them off.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .config import ROLES, check_threads, default_threads, env_threads
from .config import per_role_threads as per_role_threads  # re-exported: memory.py and bank.py import it here
from .errors import InvalidInput, ModelNotAvailable
from .models import file_identity, gguf_header, probe

log = logging.getLogger("memr1.runtime")

# OpenMP reads its settings once, when llama.cpp's library is loaded. memr1 imports llama_cpp lazily, so
# setting this at import is early enough, unless the application imported llama_cpp first.
_OMP_CHOSEN_BY_USER = "OMP_WAIT_POLICY" in os.environ
_LLAMA_LOADED_EARLY = "llama_cpp" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def thread_count(role: str, explicit: int | None = None) -> int:
    """The argument, then $MEMR1_<ROLE>_THREADS, then $MEMR1_THREADS, then the role's default. Read when a
    model loads, so an instance built without a count follows the environment of that moment."""
    if explicit is not None:
        return check_threads(explicit, f"{role or 'model'} threads")
    return env_threads(role) or default_threads(role)


def parse_threads(text: str | None) -> int | dict[str, int] | None:
    """The CLI's --threads: `2`, or `embedder=1,manager=2`."""
    if text is None or not text.strip():
        return None
    try:
        if "=" not in text:
            return int(text)
        pairs = (part.split("=", 1) for part in text.split(","))
        return {role.strip(): int(count) for role, count in pairs}
    except ValueError:
        raise InvalidInput(f"--threads takes N or role=N,… (roles: {', '.join(ROLES)}), got {text!r}") from None


@contextlib.contextmanager
def _extra_buffer_types(enabled: bool) -> Iterator[None]:
    """`Llama()` has no argument for llama_model_params.use_extra_bufts: hand it defaults with the field set.

    Callers hold `_loaded_lock`, so no other memr1 load sees the swapped function.
    """
    if enabled:
        yield
        return
    import llama_cpp.llama_cpp as api

    defaults = api.llama_model_default_params

    def without_extra_bufts() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    api.llama_model_default_params = without_extra_bufts
    try:
        yield
    finally:
        api.llama_model_default_params = defaults


def open_llama(path: Path, *, extra_bufts: bool = True, **kwargs: Any) -> Any:
    """A `Llama` for `path`; the probe child loads through here too, so it tests what this process will run."""
    from llama_cpp import Llama

    with _extra_buffer_types(extra_bufts):
        return Llama(model_path=str(path), verbose=kwargs.pop("verbose", False), **kwargs)


_loaded: dict[tuple[Any, ...], tuple[Any, threading.Lock]] = {}
_loaded_lock = threading.Lock()
_warned_early_import = False


@atexit.register
def _close_models() -> None:
    """Free llama.cpp models before interpreter teardown, when their __del__ would fail noisily."""
    with _loaded_lock:
        for llm, _ in _loaded.values():
            llm.close()
        _loaded.clear()


def shared_llama(path: Path, *, slot: str = "", threads: int, **kwargs: Any) -> tuple[Any, threading.Lock]:
    """One Llama per (file, settings, slot) per process, with its own lock: contexts are not thread-safe.

    Agents pass different slots so each keeps its own KV cache (and system-prompt prefix).
    """
    global _warned_early_import
    kwargs = {**kwargs, "n_threads": threads, "n_threads_batch": threads}
    key = (str(path.resolve()), slot, tuple(sorted(kwargs.items())))
    with _loaded_lock:
        if key not in _loaded:
            if _LLAMA_LOADED_EARLY and not _OMP_CHOSEN_BY_USER and not _warned_early_import:
                _warned_early_import = True
                log.warning(
                    "llama_cpp was imported before memr1, so OpenMP threads may spin and starve other "
                    "processes; import memr1 first or set OMP_WAIT_POLICY=passive"
                )
            header(path)  # gguf-py's checks, then llama.cpp's, in a throwaway process: never abort() this one
            extra_bufts = probe(path, embedding=bool(kwargs.get("embedding")))
            try:
                llm = open_llama(path, extra_bufts=extra_bufts, **kwargs)
            except ImportError as e:  # pragma: no cover - a hard dependency
                raise ModelNotAvailable(f"llama-cpp-python is not importable: {e}") from None
            except Exception as e:
                raise ModelNotAvailable(f"llama.cpp could not load {path}: {type(e).__name__}: {e}") from None
            _loaded[key] = (llm, threading.Lock())
        return _loaded[key]


@functools.lru_cache(maxsize=32)
def _header(path: str, identity: tuple[int, ...]) -> dict[str, object]:
    return gguf_header(Path(path))


def header(path: Path) -> dict[str, object]:
    """The file's metadata, once it passed the malformed-file check; cached while the file is unchanged."""
    return _header(str(path.resolve()), file_identity(path))
