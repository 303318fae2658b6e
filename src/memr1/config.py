"""Every setting of a bank and its agents, and the one rule for where each comes from.

A setting is the value given (an argument, a key of the dict, a CLI flag), else its environment variable, else
its default. `Config.load` applies that rule, and this module is the only one that reads these variables, so the
library, the CLI and the benchmarks cannot disagree on which wins:

    MEMR1_EMBEDDER                   embedder (else the bank's record, then memr1's default: Memory decides)
    MEMR1_MANAGER, MEMR1_ANSWERER    manager.model, answerer.model
    MEMR1_BASE_URL                   base_url: the OpenAI-compatible server both agents use
    MEMR1_<ROLE>_THREADS             embedder_threads, manager.threads, answerer.threads; then
    MEMR1_THREADS                    for all three (only models run in process have threads)
    MEMR1_BUSY_TIMEOUT               busy_timeout, in seconds
    MEMR1_CACHE_DIR                  cache_dir: probe verdicts, data sets, benchmark embeddings
                                     (MEMR1_CACHE, the benchmarks' old name for it, still works, with a warning)
    MEMR1_PROBE=0                    trust model files without probing them (`probe_enabled`)

MEMR1_PROBE is no Config field: the probe guards this process whichever bank loads a model, so `probe_enabled`
is asked when a model loads. Not here either: MEMR1_DB, the CLI's --db, and MEMR1_SQLITE_DRIVER, store.py's
test hook.

An empty variable counts as unset, and so does None or "" given for a setting: `Memory(manager=None)` means
"not chosen", so the environment still applies.
"""

from __future__ import annotations

import math
import os
import urllib.parse
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from .errors import InvalidInput

if TYPE_CHECKING:
    from .llm import LlamaCpp, OpenAICompatible

ROLES = ("embedder", "manager", "answerer")
AGENTS = ("manager", "answerer")
MAX_AGENT_THREADS = 8  # generation is memory-bound: more threads than this only contend
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds
DEFAULT_RELATED_K = 10
# Options of one kind of backend only: given to the other kind they would be dropped without a word, so they are
# refused. The server's are llm.SERVER_OPTIONS.
IN_PROCESS_OPTIONS = ("threads", "n_gpu_layers", "n_ctx", "max_ctx")


# ---- the environment ----


def _env(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    return value if value and value.strip() else None


def available_cores() -> int:
    """Cores this process may run on: a container's CPU set, not the host's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(role: str) -> int:
    """Measured on 2 cores (RESULTS.md, "threads and processes"): an embedding of a short text is fastest and
    steadiest on one thread (5 ms; two threads took 10 ms with passive waiting), while generation gains from
    every core up to memory bandwidth (Qwen2.5-1.5B: 8.1 s on one thread, 5.3 s on two)."""
    if role == "embedder":
        return 1
    return max(1, min(available_cores(), MAX_AGENT_THREADS))


def check_threads(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1024:
        raise InvalidInput(f"{what} must be an int from 1 to 1024, got {value!r}")
    return value


def env_threads(role: str, environ: Mapping[str, str] = os.environ) -> int | None:
    """$MEMR1_<ROLE>_THREADS, else $MEMR1_THREADS, else None. Another slot (a benchmark's judge) has only the
    second."""
    names = ([f"MEMR1_{role.upper()}_THREADS"] if role in ROLES else []) + ["MEMR1_THREADS"]
    for name in names:
        if (raw := _env(environ, name)) is not None:
            try:
                return check_threads(int(raw), f"${name}")
            except ValueError:
                raise InvalidInput(f"${name} must be an int from 1 to 1024, got {raw!r}") from None
    return None


def per_role_threads(threads: int | Mapping[str, int] | None) -> dict[str, int | None]:
    """`Memory(threads=…)`: one count for every model, or a mapping from role to count."""
    if threads is None or isinstance(threads, int):
        if threads is not None:
            check_threads(threads, "threads")
        return dict.fromkeys(ROLES, threads)
    if not isinstance(threads, Mapping):
        raise InvalidInput(f"threads must be an int or a mapping of {', '.join(ROLES)} to ints, got {threads!r}")
    unknown = set(threads) - set(ROLES)
    if unknown:
        raise InvalidInput(f"threads names unknown roles {sorted(unknown)}; the roles are {', '.join(ROLES)}")
    return {role: check_threads(threads[role], f"{role} threads") if role in threads else None for role in ROLES}


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """Where memr1 keeps what it can rebuild: $MEMR1_CACHE_DIR, else $XDG_CACHE_HOME/memr1, else ~/.cache/memr1."""
    chosen = _env(environ, "MEMR1_CACHE_DIR")
    if (old := _env(environ, "MEMR1_CACHE")) is not None:
        warnings.warn(
            "$MEMR1_CACHE is deprecated: set $MEMR1_CACHE_DIR"
            + (", which is set, so $MEMR1_CACHE is ignored" if chosen else ", which it stands for"),
            DeprecationWarning,
            stacklevel=2,
        )
    root = chosen or old
    if root is None:
        root = os.path.join(_env(environ, "XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "memr1")
    return Path(root)


def probe_enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether model files are probed in a child process before this one loads them (MEMR1_PROBE=0: no)."""
    return environ.get("MEMR1_PROBE") != "0"


# ---- checks: one per setting, raising InvalidInput that names `what` (a field, or the variable it came from) ----


def _ref(value: object, what: str) -> str:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise InvalidInput(f"{what} must be a model path or owner/repo/file.gguf reference, got {value!r}"[:300])
    return text


def _url(value: object, what: str) -> str:
    url = urllib.parse.urlsplit(value if isinstance(value, str) else "")
    if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
        raise InvalidInput(f"{what} must be an http:// or https:// address, got {value!r}"[:300])
    return str(value)


def _int_from(low: int, high: int, unit: str = "") -> Callable[[object, str], int]:
    def check(value: object, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise InvalidInput(f"{what} must be an int from {low} to {high}{unit}, got {value!r}")
        return value

    return check


def _number_from(low: float, high: float, unit: str = "") -> Callable[[object, str], float]:
    def check(value: object, what: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise InvalidInput(f"{what} must be a number from {low:g} to {high:g}{unit}, got {value!r}")
        return float(value)

    return check


def _context(value: object, what: str) -> int:
    from .llm import MIN_CONTEXT  # llm imports this module (through runtime): not at the top

    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_CONTEXT:
        raise InvalidInput(f"{what} must be an int of at least {MIN_CONTEXT} tokens, got {value!r}")
    return value


def _gpu_layers(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < -1:
        raise InvalidInput(f"{what} must be an int: the layers to offload, or -1 for all of them; got {value!r}")
    return value


def _server_option(value: object, what: str) -> object:
    """The bounds OpenAICompatible and Memory(server_options=) enforce, from the one place that states them."""
    from .llm import check_server_options

    check_server_options({what: value})
    return value


def _directory(value: object, what: str) -> Path:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not text.strip() or "\x00" in text:
        raise InvalidInput(f"{what} must be a directory path, got {value!r}"[:300])
    return Path(text)


def check_busy_timeout(value: object, what: str = "busy_timeout") -> float:
    """Seconds a write waits for another writer's lock; 0 fails at once."""
    return _number_from(0, 86_400, " seconds")(value, what)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "model": _ref,
    "embedder": _ref,
    "base_url": _url,
    "threads": check_threads,
    "embedder_threads": check_threads,
    "n_gpu_layers": _gpu_layers,
    "n_ctx": _context,
    "max_ctx": _context,
    "max_tokens": _int_from(1, 2**31 - 1),
    "timeout": _server_option,
    "max_response_bytes": _server_option,
    "api_key": _server_option,
    "api_key_env": _server_option,
    "seed": _int_from(0, 2**31 - 1),
    "temperature": _number_from(0, 2),
    "retries": _int_from(0, 100),
    "busy_timeout": check_busy_timeout,
    "related_k": _int_from(0, 1000),
    "cache_dir": _directory,
}


# ---- the models ----


Reason = tuple[tuple[str, ...], str, str]  # (path of the model holding the setting, "value" or "unknown", detail)


# The reasons behind each refusal, by the InvalidInput raised. pydantic builds a nested model through its __init__,
# which refuses first; the enclosing model then reports the same reasons one level down ("manager.threads", not
# "threads"), and every refusal stays a plain InvalidInput.
_REASONS: weakref.WeakKeyDictionary[BaseException, list[Reason]] = weakref.WeakKeyDictionary()


def _refused(reasons: list[Reason]) -> InvalidInput:
    error = InvalidInput("; ".join(_say(*reason) for reason in reasons))
    _REASONS[error] = reasons
    return error


def _say(path: tuple[str, ...], kind: str, detail: str) -> str:
    where = ".".join(path)
    if kind == "unknown":
        return f"unknown {where + ' ' if where else ''}settings {detail}"
    return f"{where}.{detail}" if where else detail


def _unknown(path: tuple[str, ...], keys: list[str], known: tuple[str, ...]) -> Reason:
    return path, "unknown", f"{sorted(keys)}; known: {', '.join(known)}"


def _reasons(error: ValidationError, model: type[BaseModel]) -> list[Reason]:
    reasons: list[Reason] = []
    unknown: dict[tuple[str, ...], list[str]] = {}
    for err in error.errors():
        *parents, field = tuple(map(str, err["loc"])) or ("",)
        cause = (err.get("ctx") or {}).get("error")
        if err["type"] == "extra_forbidden":
            unknown.setdefault(tuple(parents), []).append(field)
        elif isinstance(cause, BaseException) and cause in _REASONS:
            reasons += [((*parents, field, *path), kind, detail) for path, kind, detail in _REASONS[cause]]
        elif err["type"] == "value_error" and isinstance(cause, Exception):
            reasons.append((tuple(parents), "value", str(cause)))  # the checks name the setting themselves
        else:  # pydantic's words, without the input: it may be an API key
            reasons.append((tuple(parents), "value", f"{field}: {err['msg']}"))
    for path, keys in unknown.items():
        owner = AgentConfig if path and path[-1] in AGENTS else model
        reasons.append(_unknown(path, keys, tuple(owner.model_fields)))
    return reasons


class _Checked(BaseModel):
    """Refusals are InvalidInput naming the setting, never pydantic's ValidationError."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _refused(_reasons(e, type(self))) from None

    @field_validator("*", mode="before")
    @classmethod
    def _check(cls, value: Any, info: ValidationInfo) -> Any:
        check = _CHECKS.get(info.field_name or "")
        return value if check is None or value is None else check(value, info.field_name or "")


class AgentConfig(_Checked):
    """One agent's model and backend options. None leaves the backend's own default (see LlamaCpp and
    OpenAICompatible), or, for `model`, memr1's default chat model in process and "default" on a server.

    `threads`, `n_gpu_layers`, `n_ctx` and `max_ctx` configure llama.cpp in this process; `timeout`,
    `max_response_bytes`, `api_key` and `api_key_env` a server. Given for the other kind of backend they are
    refused, rather than ignored: by Config, and by `chat_backend`, which alone knows a shared base_url.
    """

    model: str | None = None
    base_url: str | None = None  # this agent's server; else Config.base_url, shared by both agents
    threads: int | None = None
    n_gpu_layers: int | None = None
    n_ctx: int | None = None
    max_ctx: int | None = None
    max_tokens: int | None = None
    timeout: float | None = None
    max_response_bytes: int | None = None
    api_key: str | None = Field(default=None, repr=False)
    api_key_env: str | None = None
    seed: int | None = None
    temperature: float | None = None
    retries: int | None = None


def _backend_url(agent: AgentConfig, role: str, shared: str | None) -> str | None:
    """The server `agent` talks to (None: it runs in process), once its options are known to fit that backend."""
    from .llm import SERVER_OPTIONS

    url = agent.base_url or shared
    misplaced = [name for name in (IN_PROCESS_OPTIONS if url else SERVER_OPTIONS) if getattr(agent, name) is not None]
    if misplaced:
        options = f"{role}: {', '.join(misplaced)} {'is an option' if len(misplaced) == 1 else 'are options'}"
        if url:
            raise InvalidInput(f"{options} of llama.cpp in this process, but the {role} runs on the server at {url}")
        raise InvalidInput(
            f"{options} of an OpenAI-compatible server, but the {role} has no base_url (nor is one shared): "
            "it runs in this process"
        )
    return url


class Config(_Checked):
    """A bank's settings. Build it with `Config.load`, which applies the environment and the defaults; the
    constructor takes the values as they are, and a None there is decided later (threads by the runtime when a
    model loads, the cache by `cache_dir()` when it is used)."""

    embedder: str | None = None  # None: the bank's record, else memr1's default embedder
    embedder_threads: int | None = None
    manager: AgentConfig = Field(default_factory=AgentConfig)
    answerer: AgentConfig = Field(default_factory=AgentConfig)
    base_url: str | None = None  # the server of both agents, unless an agent names its own
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT  # seconds a write waits for another writer
    related_k: int = DEFAULT_RELATED_K  # memories the manager sees beside each turn
    cache_dir: Path | None = None

    @model_validator(mode="after")
    def _agents_fit_their_backends(self) -> Config:
        for role in AGENTS:
            _backend_url(getattr(self, role), role, self.base_url)
        return self

    @classmethod
    def load(cls, values: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] = os.environ) -> Config:
        """The settings in `values`, else from `environ`, else the defaults.

        `values` holds Config's fields; an agent's may be a dict of AgentConfig fields, an AgentConfig, or a
        string, its model: `{"manager": {"model": "m.gguf", "threads": 2}, "answerer": "a.gguf",
        "busy_timeout": 5}`. It may also hold `threads` as Memory takes it (one count, or a mapping of roles
        to counts), which, like $MEMR1_THREADS, serves the models run in process: `embedder_threads` or an
        agent's own `threads` wins over it. Threads are resolved here for the embedder and for each agent run
        in process (the count given, else the environment's, else 1 for the embedder and the cores up to 8
        for an agent); an agent on a server has none.
        """
        given = _given(values, (), (*cls.model_fields, "threads"))
        threads = per_role_threads(given.pop("threads", None))
        data: dict[str, Any] = {**given}
        shared = data["base_url"] = given.get("base_url") or _from_env(environ, "MEMR1_BASE_URL", _url)
        for role in AGENTS:
            agent = data[role] = _agent_values(role, given.get(role))
            if "model" not in agent:
                agent["model"] = _from_env(environ, f"MEMR1_{role.upper()}", _ref)
            if "threads" not in agent and not (agent.get("base_url") or shared):
                agent["threads"] = threads[role] or env_threads(role, environ) or default_threads(role)
        if "embedder" not in data:
            data["embedder"] = _from_env(environ, "MEMR1_EMBEDDER", _ref)
        if "embedder_threads" not in data:
            data["embedder_threads"] = (
                threads["embedder"] or env_threads("embedder", environ) or default_threads("embedder")
            )
        if "busy_timeout" not in data:
            seconds = _from_env(environ, "MEMR1_BUSY_TIMEOUT", _seconds)
            data["busy_timeout"] = DEFAULT_BUSY_TIMEOUT if seconds is None else seconds
        if "cache_dir" not in data:
            data["cache_dir"] = cache_dir(environ)
        return cls(**data)

    def backend(self, role: str) -> LlamaCpp | OpenAICompatible:
        """The chat model of agent `role` ("manager" or "answerer")."""
        if role not in AGENTS:
            raise InvalidInput(f"role must be one of {', '.join(AGENTS)}, got {role!r}")
        return chat_backend(getattr(self, role), role=role, base_url=self.base_url)


def _given(values: object, path: tuple[str, ...], known: tuple[str, ...]) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise InvalidInput(f"{'.'.join(path) or 'config'} must be a mapping of settings, got {type(values).__name__}")
    if unknown := [str(key) for key in values if key not in known]:
        raise _refused([_unknown(path, unknown, known)])
    return {
        key: value for key, value in values.items() if value is not None and not (isinstance(value, str) and not value)
    }


def _agent_values(role: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, (str, os.PathLike)):
        return {"model": value}
    if isinstance(value, AgentConfig):
        return value.model_dump(exclude_none=True)
    if isinstance(value, Mapping):
        return _given(value, (role,), tuple(AgentConfig.model_fields))
    raise InvalidInput(
        f"{role} must be a model reference, a mapping of its settings or an AgentConfig, got {type(value).__name__}"
    )


def _seconds(raw: str, what: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        return check_busy_timeout(raw, what)  # refused, saying what it takes
    return check_busy_timeout(value if math.isfinite(value) else raw, what)


def _from_env(environ: Mapping[str, str], name: str, check: Callable[[str, str], Any]) -> Any:
    """The variable, checked under its own name, so that a refusal says where the value came from."""
    raw = _env(environ, name)
    return None if raw is None else check(raw, f"${name}")


# ---- the chat backend ----


def chat_backend(agent: AgentConfig, *, role: str, base_url: str | None = None) -> LlamaCpp | OpenAICompatible:
    """The chat model `agent` describes: on its own server, else on `base_url` (the one both agents share), else in
    this process, where `role` names its llama.cpp context. Only the options set are passed on, so each backend
    keeps its own defaults; an option of the other kind of backend is refused."""
    from .llm import DEFAULT_CHAT_MODEL, SERVER_OPTIONS, LlamaCpp, OpenAICompatible  # llm imports this module

    if not isinstance(agent, AgentConfig):
        raise InvalidInput(f"chat_backend takes an AgentConfig, got {type(agent).__name__}")
    if base_url is not None:
        _url(base_url, "base_url")
    url = _backend_url(agent, role, base_url)
    common = _set(agent, ("seed", "temperature", "retries", "max_tokens"))
    if url:
        return OpenAICompatible(url, agent.model or "default", **common, **_set(agent, SERVER_OPTIONS))
    local = _set(agent, IN_PROCESS_OPTIONS)
    if "threads" in local:
        local["n_threads"] = local.pop("threads")
    return LlamaCpp(agent.model or DEFAULT_CHAT_MODEL, slot=role, **common, **local)


def _set(agent: AgentConfig, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(agent, name) for name in names if getattr(agent, name) is not None}
