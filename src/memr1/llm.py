"""Chat backends: one generation constrained to a JSON schema, and nothing else.

A backend implements `generate` (messages, schema, max tokens, temperature and seed in; text and
token usage out) and says how long its context is and how many tokens a prompt takes, when it
knows. Everything shared (retries on unusable output, parsing, shrinking a prompt to fit) lives
once in `memr1.agents`, so every backend gets it. `LlamaCpp` runs a GGUF in process;
`OpenAICompatible` talks to llama-server, vLLM or Ollama. Neither trusts what it did not write:
a chat template renders in a bounded child process, and a server's answer is bounded in time and
size and validated before it is read.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

import httpcore
from pydantic import BaseModel, Field, NonNegativeInt, ValidationError

from . import chat_template
from .errors import InvalidInput, ModelNotAvailable, PromptTooLong
from .models import resolve
from .runtime import check_threads, header, shared_llama, thread_count

log = logging.getLogger("memr1.llm")
T = TypeVar("T")

# Qwen2.5-1.5B-Instruct (Apache-2.0) at Q4_K_M: 986 MB, follows JSON schemas well for its size.
DEFAULT_CHAT_MODEL = "lmstudio-community/Qwen2.5-1.5B-Instruct-GGUF/Qwen2.5-1.5B-Instruct-Q4_K_M.gguf"
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Private-use code points around a per-process secret: no template can contain (and so fake) a message's place.
_SLOT = "\ue000" + secrets.token_hex(8) + "-{}\ue001"
MIN_CONTEXT = 512  # below this no agent prompt fits, and llama-cpp-python mis-sizes its buffers
# A chat template renders once per sequence of roles, in a child process with these bounds (chat_template.py).
# Real templates take milliseconds and kilobytes; the child's start-up is most of the time.
TEMPLATE_SECONDS = 10.0
TEMPLATE_MEMORY = 256 * 2**20  # bytes the template may allocate, beyond the interpreter and jinja2
TEMPLATE_CHARS = 2**20  # markup around the messages: kilobytes for real templates
# An OpenAI-compatible server: one `complete` call, every retry included, ends within the timeout. Generous,
# since a CPU server may take a minute per answer; the cap on an answer's size is a thousand times what
# any max_tokens needs.
DEFAULT_TIMEOUT = 300.0
MAX_RESPONSE_BYTES = 8 * 2**20
SERVER_OPTIONS = ("timeout", "max_response_bytes", "api_key", "api_key_env")


@dataclass(frozen=True)
class Request:
    """One generation asked of a backend: what the model reads, the JSON schema its output must fit, and how
    to sample. The agents make it; a backend only carries it out."""

    messages: Sequence[dict[str, str]]
    schema: dict[str, Any]
    max_tokens: int
    temperature: float = 0.0
    seed: int = 0


@dataclass
class Generation:
    """What one backend call produced: the raw text, before any parsing, and what it cost."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Completion:
    """A parsed completion: what the agents' parser returned, over every attempt it took."""

    value: Any
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    attempts: int = 1


@runtime_checkable
class Backend(Protocol):
    """A chat model that can be constrained to a JSON schema: `generate` is the one method a backend implements.

    `context_length()` and `count_tokens(messages)` return None when the backend cannot know (a
    server): then `generate` raises `PromptTooLong` itself when a prompt overflows. A backend may
    also carry the sampling defaults the agents read: `temperature`, `seed`, `retries` (how many
    times unusable output is asked again) and `max_tokens` (a cap on what each agent asks for)."""

    def generate(self, request: Request) -> Generation: ...

    def context_length(self) -> int | None: ...

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int | None: ...


LLM = Backend  # the name before the backend protocol was one method


class ChatBackend:
    """Sampling defaults shared by memr1's backends, and `complete`: one parsed, retried call.

    Subclass it to write a backend: implement `generate` (see `Backend`), and `context_length`/
    `count_tokens` where the model knows them."""

    def __init__(self, *, temperature: float = 0.0, seed: int = 0, retries: int = 2, max_tokens: int | None = None):
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):  # llama.cpp: 0 = no limit
            raise InvalidInput(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        if type(retries) is not int or not 0 <= retries <= 100:
            raise InvalidInput(f"retries must be an int from 0 to 100, got {retries!r}")
        self.temperature, self.seed, self.retries, self.max_tokens = temperature, seed, retries, max_tokens

    def context_length(self) -> int | None:
        return None

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int | None:
        return None

    def complete(
        self,
        messages: Sequence[dict[str, str]],
        schema: dict[str, Any],
        *,
        parse: Callable[[Any], T],
        max_tokens: int = 512,
    ) -> Completion:
        """`generate` until `parse` accepts the text, as the agents call it."""
        from .agents import complete  # the agents import backends: this way round at call time only

        backend = cast(Backend, self)  # a subclass's generate makes it one
        return complete(backend, messages, schema, parse=parse, max_tokens=max_tokens)


class _Refused(Exception):
    """Why a chat template cannot be used; the caller names the model."""


_sandboxed: dict[str, str | _Refused] = {}  # by job; refusals too, as each one cost up to TEMPLATE_SECONDS
_sandboxed_lock = threading.Lock()


def _sandbox(templates: list[str], roles: tuple[str, ...] | None = None, bos: str = "", eos: str = "") -> str:
    """Compile `templates` in a child process bounded by TEMPLATE_SECONDS and TEMPLATE_MEMORY and, given
    `roles`, render the first over one placeholder per role. Once per process for each job."""
    job: dict[str, Any] = {
        "templates": templates,
        "bos": bos,
        "eos": eos,
        "max_chars": TEMPLATE_CHARS,
        "seconds": TEMPLATE_SECONDS,
        "memory": TEMPLATE_MEMORY,
    }
    if roles is not None:
        job["messages"] = [{"role": role, "content": _SLOT.format(i)} for i, role in enumerate(roles)]
    key = json.dumps(job)
    with _sandboxed_lock:  # concurrent first calls wait for one child instead of each starting their own
        if key not in _sandboxed:
            try:
                _sandboxed[key] = _run_child({**job, "path": [p for p in sys.path if p]})
            except _Refused as e:
                _sandboxed[key] = e
        done = _sandboxed[key]
    if isinstance(done, _Refused):
        raise done
    return done


def _run_child(job: dict[str, Any]) -> str:
    what = "render" if "messages" in job else "compile"
    if getattr(sys, "frozen", False) or not sys.executable:  # a frozen app has no interpreter to run the child
        log.warning("a chat template runs in process, without time or memory bounds: no interpreter for a child")
        try:
            return chat_template.run(job)
        except ValueError as e:
            raise _Refused(str(e)) from None
    argv = [sys.executable, "-I", chat_template.__file__]  # -I: neither the script's folder nor $PYTHON* apply
    try:
        done = subprocess.run(
            argv,
            input=json.dumps(job),
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=TEMPLATE_SECONDS,
        )
    except subprocess.TimeoutExpired:
        raise _Refused(f"did not {what} within {TEMPLATE_SECONDS:g}s; refusing it") from None
    try:
        out = json.loads(done.stdout)
    except ValueError:
        said = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise _Refused(f"stopped the process that would {what} it: {said[0][-300:]}") from None
    if "error" in out:
        raise _Refused(f"{out['error']}; refusing it")
    return str(out["rendered"])


def json_grammar(schema: dict[str, Any]) -> str:
    """The GBNF grammar that constrains a reply to `schema`: one place, so that training (finetune.constrained)
    samples under exactly the grammar that inference does."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema, sort_keys=True))


def vet_chat_templates(path: Path, ref: str) -> None:
    """Compile a GGUF's chat templates in a bounded child before llama-cpp-python loads the file: it compiles
    them all in this process, unbounded, and compiling folds constants such as 'A' * 1500000000. Embedding
    models are loaded the same way, so they are vetted too."""
    meta = header(path)
    templates = [v for k, v in meta.items() if k.startswith("tokenizer.chat_template") and isinstance(v, str)]
    if templates:
        try:
            _sandbox(templates)
        except _Refused as e:
            raise ModelNotAvailable(f"chat template of {ref!r} {e}") from None


class LlamaCpp(ChatBackend):
    """A GGUF chat model in process.

    User content is tokenized with special tokens disabled, so text such as
    "<|im_start|>" in a memory can never become a control token; only the chat
    template's own markup is. Each instance owns its llama.cpp context (pass a distinct
    `slot` to share a file between agents without thrashing one KV cache), and the
    fixed system prompt comes first so llama.cpp reuses its KV prefix across calls.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_CHAT_MODEL,
        *,
        n_ctx: int | None = None,
        max_ctx: int = 8192,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        seed: int = 0,
        temperature: float = 0.0,
        retries: int = 2,
        slot: str = "",
        max_tokens: int | None = None,
        sha256: str | None = None,
    ) -> None:
        """`max_tokens` caps what each agent asks for; `sha256` pins the file (as `model@sha256:<hex>` does).

        `n_threads` serves generation and prompt processing alike; by default $MEMR1_MANAGER_THREADS or
        $MEMR1_ANSWERER_THREADS (by `slot`), then $MEMR1_THREADS, then the available cores up to 8."""
        super().__init__(temperature=temperature, seed=seed, retries=retries, max_tokens=max_tokens)
        for name, value in (("n_ctx", n_ctx), ("max_ctx", max_ctx)):
            if value is not None and (type(value) is not int or value < MIN_CONTEXT):
                raise InvalidInput(f"{name} must be an int of at least {MIN_CONTEXT} tokens, got {value!r}")
        if n_threads is not None:
            check_threads(n_threads, "n_threads")
        self.ref = os.fspath(model)
        self.sha256, self.slot = sha256, slot
        self.n_ctx, self.max_ctx, self.n_threads, self.n_gpu_layers = n_ctx, max_ctx, n_threads, n_gpu_layers
        self._path: Path | None = None
        self._markup: dict[tuple[str, ...], list[list[int]]] = {}
        self._vetted = False
        self._grammars: dict[str, Any] = {}
        self._counted: tuple[str, list[int]] | None = None  # the last prompt counted: generate reuses it

    @property
    def path(self) -> Path:
        if self._path is None:
            self._path = resolve(self.ref, sha256=self.sha256)
        return self._path

    def context_length(self) -> int:
        """The model's trained context, capped by max_ctx to bound KV memory; never llama-cpp's 512 default."""
        if self.n_ctx:
            return self.n_ctx
        meta = header(self.path)
        trained = int(meta.get(f"{meta.get('general.architecture')}.context_length", 4096))  # type: ignore[call-overload]
        if trained < MIN_CONTEXT:  # a corrupt or nonsensical field
            raise ModelNotAvailable(f"{self.ref!r} declares a {trained}-token context; agents need {MIN_CONTEXT}")
        return min(trained, self.max_ctx)

    def _llama(self) -> tuple[Any, threading.Lock]:
        if not self._vetted:
            self._vet_templates()
        # No seed here: every completion passes its own, and a seed in the key would load a fresh context
        # (and re-evaluate the whole prompt, and keep the old one in memory) each time the seed changes.
        return shared_llama(
            self.path,
            slot=self.slot,
            n_ctx=self.context_length(),
            n_gpu_layers=self.n_gpu_layers,
            threads=thread_count(self.slot, self.n_threads),
        )

    def _vet_templates(self) -> None:
        vet_chat_templates(self.path, self.ref)
        self._vetted = True

    def _grammar(self, schema: dict[str, Any]) -> Any:
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:  # converting a schema to GBNF and parsing it costs milliseconds
            self._grammars[key] = LlamaGrammar.from_string(json_grammar(schema), verbose=False)
        return self._grammars[key]

    def tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The chat template's markup, tokenized with specials, around each content, tokenized without."""
        llm, _ = self._llama()
        markup = self._markup_for(llm, tuple(m["role"] for m in messages))
        out: list[int] = []
        for before, message in zip(markup, messages):
            out += before
            out += llm.tokenize(message["content"].encode(), add_bos=False, special=False)
        return out + markup[-1]

    def count_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return len(self._prompt(messages))

    def _prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """The agents count a prompt, then generate from it: tokenize it once."""
        key = json.dumps(list(messages))
        if self._counted is None or self._counted[0] != key:
            self._counted = (key, self.tokens(messages))
        return self._counted[1]

    def _markup_for(self, llm: Any, roles: tuple[str, ...]) -> list[list[int]]:
        """The markup before each message and after the last, tokenized. It depends on the roles alone, as the
        template renders around placeholders: contents are never in the string it returns, so no content can
        move the split, and the template runs once per sequence of roles, not once per call."""
        if roles not in self._markup:
            vocab_text = llm._model.token_get_text  # noqa: SLF001 - the public API has no token-to-text helper
            bos = vocab_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
            eos = vocab_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
            source = llm.metadata.get("tokenizer.chat_template") or _CHATML
            try:
                rendered = _sandbox([source], roles, bos, eos)
            except _Refused as e:
                raise ModelNotAvailable(f"chat template of {self.ref!r} {e}") from None
            pieces = []
            for i, role in enumerate(roles):
                before, sep, rendered = rendered.partition(_SLOT.format(i))
                if not sep:
                    raise ModelNotAvailable(f"chat template of {self.ref!r} drops the {role} message")
                pieces.append(before)
            self._markup[roles] = [llm.tokenize(p.encode(), add_bos=False, special=True) for p in [*pieces, rendered]]
        return self._markup[roles]

    def generate(self, request: Request) -> Generation:
        if type(request.max_tokens) is not int or request.max_tokens < 1:  # llama.cpp reads 0 as unbounded
            raise InvalidInput(f"max_tokens must be a positive int, got {request.max_tokens!r}")
        llm, lock = self._llama()
        grammar = self._grammar(request.schema)
        prompt = self._prompt(request.messages)
        room = llm.n_ctx() - len(prompt)
        if room < 1:
            raise PromptTooLong(
                f"prompt of {len(prompt)} tokens does not fit a {llm.n_ctx()}-token context",
                tokens=len(prompt) + 1,
                limit=llm.n_ctx(),
            )
        with lock:
            out = llm.create_completion(
                prompt=prompt,
                grammar=grammar,
                max_tokens=min(request.max_tokens, room),
                temperature=request.temperature,
                seed=request.seed,
            )
        usage = out["usage"]
        return Generation(out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"])

    def __repr__(self) -> str:
        return f"LlamaCpp({Path(self.ref).name!r})"


class _Usage(BaseModel):
    prompt_tokens: NonNegativeInt | None = None
    completion_tokens: NonNegativeInt | None = None


class _Message(BaseModel):
    content: str | None = None  # null when a model answers with tool calls: unusable output, retried


class _Choice(BaseModel):
    message: _Message


class _Reply(BaseModel):
    """What memr1 reads of a chat completion; whatever else a server sends is ignored."""

    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage | None = None


class _Deadlines(httpcore.NetworkBackend):
    """httpcore's sockets, every connect, read and write ending by the calling thread's deadline.

    Timeouts per operation do not bound a call: a server sending a byte before each read times out
    holds it for ever. httpcore takes a network backend; httpx offers no way to pass one."""

    def __init__(self) -> None:
        self._sockets = httpcore.SyncBackend()
        self._local = threading.local()

    @contextlib.contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Within an outer deadline (a call's retries), the earlier of the two holds."""
        outer = getattr(self._local, "deadline", None)
        self._local.deadline = deadline if outer is None else min(outer, deadline)
        try:
            yield
        finally:
            self._local.deadline = outer

    def left(self, timeout: float | None, expired: type[Exception]) -> float:
        left = self._local.deadline - time.monotonic()
        if left <= 0:
            raise expired("the call's deadline has passed")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        wait = self.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._sockets.connect_tcp(host, port, wait, local_address, socket_options), self)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadlines: _Deadlines) -> None:
        self._stream, self._deadlines = stream, deadlines

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadlines.left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._deadlines.left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        wait = self._deadlines.left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, wait), self._deadlines)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


def check_server_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """`Memory(server_options=...)`: keyword arguments of OpenAICompatible, checked before anything is opened."""
    if options is not None and not isinstance(options, Mapping):
        raise InvalidInput(f"server_options must be a dict, got {type(options).__name__}")
    options = dict(options or {})
    if unknown := sorted(map(str, set(options) - set(SERVER_OPTIONS))):
        raise InvalidInput(f"unknown server options {unknown}; known: {list(SERVER_OPTIONS)}")
    timeout = options.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 86_400:
        raise InvalidInput(f"timeout must be a number of seconds above 0, at most 86400, got {timeout!r}")
    size = options.get("max_response_bytes", MAX_RESPONSE_BYTES)
    if type(size) is not int or not 1024 <= size <= 2**31:
        raise InvalidInput(f"max_response_bytes must be an int from 1024 to 2**31, got {size!r}")
    for name in ("api_key", "api_key_env"):
        value = options.get(name)
        if value is not None and (not isinstance(value, str) or not value or not value.isprintable()):
            raise InvalidInput(f"{name} must be a non-empty string of printable characters")  # no echo: a secret
    return options


class OpenAICompatible(ChatBackend):
    """An OpenAI-compatible /v1/chat/completions server: llama-server, vLLM, Ollama, llama_cpp.server.

    The schema is sent as `response_format={"type": "json_schema", ...}`; servers that only
    know llama-cpp-python's `{"type": "json_object", "schema": ...}` are detected on the
    first refusal and served that form from then on.

    The server is trusted with nothing but the model's text. Each `complete` ends within
    `timeout` seconds, retries included, however slowly bytes arrive; an answer over
    `max_response_bytes` is cut off unread; redirects are not followed, so the API key
    goes to `base_url` only. A server that breaks any of this, or answers with anything
    but a chat completion, raises ModelNotAvailable; a model whose text does not fit the
    schema raises ModelOutputError, as on llama.cpp.
    """

    def __init__(
        self,
        base_url: str,
        model: str = "default",
        *,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = DEFAULT_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        temperature: float = 0.0,
        retries: int = 2,
        seed: int = 0,
        max_tokens: int | None = None,
    ) -> None:
        """`api_key` is sent as a bearer token; without it, the value of $`api_key_env`, if set."""
        check_server_options(
            {
                "timeout": timeout,
                "max_response_bytes": max_response_bytes,
                "api_key": api_key,
                "api_key_env": api_key_env,
            }
        )
        url = urllib.parse.urlsplit(base_url if isinstance(base_url, str) else "")
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise InvalidInput(f"base_url must be an http:// or https:// address, got {base_url!r}")
        super().__init__(temperature=temperature, seed=seed, retries=retries, max_tokens=max_tokens)
        self.base_url = base_url.rstrip("/")
        self.model, self.api_key, self.api_key_env = model, api_key, api_key_env
        self.timeout, self.max_response_bytes = float(timeout), max_response_bytes
        self._format: str | None = None
        self._deadlines = _Deadlines()
        # No keep-alive: a call takes seconds, and a pooled connection the server has closed meanwhile fails the
        # next request with a reset that no retry can tell from a broken server.
        self._pool = httpcore.ConnectionPool(network_backend=self._deadlines, max_keepalive_connections=0)

    def _headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"Content-Type", b"application/json"), (b"Accept", b"application/json"), (b"User-Agent", b"memr1")]
        if key := self.api_key or os.environ.get(self.api_key_env):
            if not key.isascii() or not key.isprintable():  # h11 would quote the value in its error
                raise ModelNotAvailable("the API key holds characters no HTTP header can carry")
            headers.append((b"Authorization", f"Bearer {key}".encode()))
        return headers

    def _post(self, body: dict[str, Any]) -> tuple[int, bytearray]:
        """The status and body of one POST to /chat/completions; of an error, only the start of its body."""
        try:
            wait = {"pool": self._deadlines.left(None, httpcore.PoolTimeout)}  # for a connection other calls hold
            with self._pool.stream(
                "POST",
                f"{self.base_url}/chat/completions",
                headers=self._headers(),
                content=json.dumps(body).encode(),
                extensions={"timeout": wait},
            ) as response:
                if 300 <= response.status < 400:
                    where = _header(response, b"location")[:200].decode("latin-1")
                    raise ModelNotAvailable(
                        f"{self.base_url} redirects (HTTP {response.status}) to {where!r}; memr1 follows no redirect, "
                        "which could carry the API key elsewhere: set base_url to the address that answers"
                    )
                if response.status >= 300:
                    return response.status, _read(response, 2000)  # enough to say why
                declared = _header(response, b"content-length")
                if declared.isdigit() and int(declared) > self.max_response_bytes:
                    raise ModelNotAvailable(
                        f"{self.base_url} is sending {int(declared)} bytes; refused unread "
                        f"(max_response_bytes={self.max_response_bytes})"
                    )
                data = _read(response, self.max_response_bytes + 1)
                if len(data) > self.max_response_bytes:
                    raise ModelNotAvailable(
                        f"{self.base_url} sent more than {self.max_response_bytes} bytes; refused (max_response_bytes)"
                    )
                return response.status, data
        except httpcore.TimeoutException:
            raise ModelNotAvailable(
                f"{self.base_url} did not answer within the {self.timeout:g}s timeout (a server "
                "option: OpenAICompatible(timeout=...), Memory(server_options=...), --timeout)"
            ) from None
        except httpcore.ConnectError as e:
            raise ModelNotAvailable(f"cannot reach {self.base_url}: {e}") from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError, httpcore.UnsupportedProtocol) as e:
            raise ModelNotAvailable(f"{self.base_url} broke the exchange: {type(e).__name__}: {e}") from None

    def _reply(self, data: bytearray) -> tuple[str, int, int]:
        try:
            reply = _Reply.model_validate_json(data)
        except ValidationError as e:
            error = e.errors()[0]
            where = ".".join(map(str, error["loc"])) or "the body"
            raise ModelNotAvailable(
                f"{self.base_url} did not answer with a chat completion: {where}: {error['msg'][:200]}"
            ) from None
        usage = reply.usage or _Usage()
        return reply.choices[0].message.content or "", usage.prompt_tokens or 0, usage.completion_tokens or 0

    def _format_for(self, schema: dict[str, Any], kind: str) -> dict[str, Any]:
        if kind == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "memr1", "schema": schema, "strict": True}}
        return {"type": "json_object", "schema": schema}

    def deadline(self) -> contextlib.AbstractContextManager[None]:
        """Every `generate` within it, the agents' retries included, ends within `timeout` of its start."""
        return self._deadlines.until(time.monotonic() + self.timeout)

    def generate(self, request: Request) -> Generation:
        body = {
            "model": self.model,
            "messages": list(request.messages),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "seed": request.seed,
        }
        with self.deadline():
            for kind in [self._format] if self._format else ["json_schema", "json_object"]:
                status, data = self._post({**body, "response_format": self._format_for(request.schema, kind)})
                if status >= 300:
                    if overflow := _overflow(status, data):
                        raise overflow
                    if self._format is None and kind == "json_schema":
                        continue  # llama_cpp.server answers 500, others 400/422: try the other form
                    raise ModelNotAvailable(f"{self.base_url} answered HTTP {status}: {bytes(data[:300])!r}")
                self._format = kind
                return Generation(*self._reply(data))
        raise ModelNotAvailable(f"{self.base_url} accepts neither json_schema nor json_object response formats")

    def __repr__(self) -> str:
        return f"OpenAICompatible({self.base_url!r}, {self.model!r})"


# How servers say a prompt overflows the context: llama-server ("exceed_context_size_error" with
# n_prompt_tokens and n_ctx), llama_cpp.server, vLLM and OpenAI (in words). The numbers let the agents
# shrink the prompt in proportion; without them it is halved.
_OVERFLOW = re.compile(
    r"exceed_context_size|context_length_exceeded|exceeds? (the )?(available )?context|maximum context length"
    r"|exceed context window",
    re.IGNORECASE,
)
_LIMIT = re.compile(r"(?:maximum context length is|context window of|n_ctx\W+)\s*(\d+)", re.IGNORECASE)
_TOKENS = re.compile(
    r"(?:Requested tokens \(|you requested |resulted in |has |n_prompt_tokens\W+)\s*(\d+)", re.IGNORECASE
)


def _overflow(status: int, data: bytearray) -> PromptTooLong | None:
    """The server's refusal of a prompt too long for its context, as the PromptTooLong the agents shrink on."""
    text = bytes(data).decode("utf-8", "replace")
    if status not in (400, 413, 422, 500) or not _OVERFLOW.search(text):
        return None
    limit, tokens = _LIMIT.search(text), _TOKENS.search(text)
    if limit and tokens and int(tokens.group(1)) > int(limit.group(1)) > 0:
        return PromptTooLong(
            f"the server's context holds {limit.group(1)} tokens; the request needs {tokens.group(1)}",
            tokens=int(tokens.group(1)),
            limit=int(limit.group(1)),
        )
    return PromptTooLong(f"the prompt does not fit the server's context: {text[:200]!r}", tokens=2, limit=1)


def _header(response: httpcore.Response, name: bytes) -> bytes:
    return next((value for key, value in response.headers if key.lower() == name), b"")


def _read(response: httpcore.Response, limit: int) -> bytearray:
    """At most `limit` bytes of the body, read as they arrive: the rest is never held in memory."""
    body = bytearray()
    for chunk in response.iter_stream():
        body += chunk[: limit - len(body)]
        if len(body) >= limit:
            break
    return body
