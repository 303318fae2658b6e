"""LLM backends: one chat completion constrained to a JSON schema, parsed and validated.

`LlamaCpp` runs a GGUF in process; `OpenAICompatible` talks to llama-server, vLLM or
Ollama. Both retry malformed output a bounded number of times and then raise
`ModelOutputError`, so callers never see half-parsed output.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from .errors import InvalidInput, ModelNotAvailable, ModelOutputError, PromptTooLong
from .models import resolve
from .prompts import OutputRejected
from .runtime import check_threads, header, shared_llama, thread_count

log = logging.getLogger("memr1.llm")
T = TypeVar("T")

# Qwen2.5-1.5B-Instruct (Apache-2.0) at Q4_K_M: 986 MB, follows JSON schemas well for its size.
DEFAULT_CHAT_MODEL = "lmstudio-community/Qwen2.5-1.5B-Instruct-GGUF/Qwen2.5-1.5B-Instruct-Q4_K_M.gguf"
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SLOT = "\ue000memr1-{}\ue001"  # private-use code points: never part of a chat template
MIN_CONTEXT = 512  # below this no agent prompt fits, and llama-cpp-python mis-sizes its buffers


@dataclass
class Completion:
    value: Any  # what the parser returned
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    attempts: int = 1


@runtime_checkable
class LLM(Protocol):
    """A chat model that answers with JSON matching `schema`; `parse` validates it or raises OutputRejected."""

    def complete(
        self, messages: Sequence[dict[str, str]], schema: dict[str, Any], *, parse: Callable[[Any], T],
        max_tokens: int = 512,
    ) -> Completion: ...  # fmt: skip


def retry_until_parsed(name: str, retries: int, attempt: Callable[[int], tuple[str, int, int]],
              parse: Callable[[Any], Any]) -> Completion:  # fmt: skip
    """Run `attempt(i)` until `parse` accepts its text; sum tokens and time over all tries."""
    start, prompt, completion, reasons = time.perf_counter(), 0, 0, []
    for i in range(retries + 1):
        text, p, c = attempt(i)
        prompt, completion = prompt + p, completion + c
        try:
            value = parse(text)
        except OutputRejected as e:
            reasons.append(str(e))
            log.warning("%s: output rejected (attempt %d of %d): %s", name, i + 1, retries + 1, e)
            continue
        return Completion(value, text, prompt, completion, time.perf_counter() - start, i + 1)
    log.error("%s: refused after %d unusable outputs; nothing was written", name, retries + 1)
    raise ModelOutputError(f"{name} gave unusable output {retries + 1} times; last: {reasons[-1]}", reasons=reasons)


class LlamaCpp:
    """A GGUF chat model in process.

    User content is tokenized with special tokens disabled, so text such as
    "<|im_start|>" in a memory can never become a control token; only the chat
    template's own markup is. Each instance owns its llama.cpp context (pass a distinct
    `slot` to share a file between agents without thrashing one KV cache), and the
    fixed system prompt comes first so llama.cpp reuses its KV prefix across calls.
    """

    def __init__(self, model: str | os.PathLike[str] = DEFAULT_CHAT_MODEL, *, n_ctx: int | None = None,
                 max_ctx: int = 8192, n_threads: int | None = None, n_gpu_layers: int = 0, seed: int = 0,
                 temperature: float = 0.0, retries: int = 2, reuse_prefix: bool = True, slot: str = "",
                 max_tokens: int | None = None, sha256: str | None = None) -> None:  # fmt: skip
        """`max_tokens` caps what each agent asks for; `sha256` pins the file (as `model@sha256:<hex>` does).

        `n_threads` serves generation and prompt processing alike; by default $MEMR1_MANAGER_THREADS or
        $MEMR1_ANSWERER_THREADS (by `slot`), then $MEMR1_THREADS, then the available cores up to 8."""
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):  # llama.cpp: 0 = no limit
            raise InvalidInput(f"max_tokens must be a positive int or None, got {max_tokens!r}")
        for name, value in (("n_ctx", n_ctx), ("max_ctx", max_ctx)):
            if value is not None and (type(value) is not int or value < MIN_CONTEXT):
                raise InvalidInput(f"{name} must be an int of at least {MIN_CONTEXT} tokens, got {value!r}")
        if n_threads is not None:
            check_threads(n_threads, "n_threads")
        self.ref = os.fspath(model)
        self.max_tokens, self.sha256 = max_tokens, sha256
        self.n_ctx, self.max_ctx, self.n_threads, self.n_gpu_layers = n_ctx, max_ctx, n_threads, n_gpu_layers
        self.seed, self.temperature, self.retries, self.reuse_prefix, self.slot = (
            seed,
            temperature,
            retries,
            reuse_prefix,
            slot,
        )
        self._path: Path | None = None
        self._compiled: Any = None
        self._grammars: dict[str, Any] = {}

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
        # No seed here: every completion passes its own, and a seed in the key would load a fresh context
        # (and re-evaluate the whole prompt, and keep the old one in memory) each time the seed changes.
        return shared_llama(self.path, slot=self.slot, n_ctx=self.context_length(), n_gpu_layers=self.n_gpu_layers,
                            threads=thread_count(self.slot, self.n_threads))  # fmt: skip

    def _template(self, llm: Any) -> Any:
        """The model file's chat template, compiled in a sandbox: it is data from an untrusted file."""
        if self._compiled is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            try:
                self._compiled = env.from_string(llm.metadata.get("tokenizer.chat_template") or _CHATML)
            except Exception as e:
                raise ModelNotAvailable(f"chat template of {self.ref!r} does not compile: {e}") from None
        return self._compiled

    def _grammar(self, schema: dict[str, Any]) -> Any:
        from llama_cpp import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:  # converting a schema to GBNF and parsing it costs milliseconds
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    def tokens(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Render the chat template around placeholders; tokenize markup with specials, content without."""
        llm, _ = self._llama()

        def fail(message: str) -> None:
            raise ModelNotAvailable(f"chat template of {self.ref!r}: {message}")

        vocab_text = llm._model.token_get_text  # noqa: SLF001 - the public API has no token-to-text helper
        bos = vocab_text(llm.token_bos()) if llm.token_bos() >= 0 else ""
        eos = vocab_text(llm.token_eos()) if llm.token_eos() >= 0 else ""
        slots = [{"role": m["role"], "content": _SLOT.format(i)} for i, m in enumerate(messages)]
        try:
            rendered = self._template(llm).render(
                messages=slots, add_generation_prompt=True, bos_token=bos, eos_token=eos, raise_exception=fail
            )
        except ModelNotAvailable:
            raise
        except Exception as e:
            raise ModelNotAvailable(f"chat template of {self.ref!r} fails to render: {e}") from None
        out: list[int] = []
        for i, message in enumerate(messages):
            before, sep, rendered = rendered.partition(_SLOT.format(i))
            if not sep:
                raise ModelNotAvailable(f"chat template of {self.ref!r} drops the {message['role']} message")
            out += llm.tokenize(before.encode(), add_bos=False, special=True)
            out += llm.tokenize(message["content"].encode(), add_bos=False, special=False)
        return out + llm.tokenize(rendered.encode(), add_bos=False, special=True)

    def complete(self, messages: Sequence[dict[str, str]], schema: dict[str, Any], *, parse: Callable[[Any], T],
                 max_tokens: int = 512) -> Completion:  # fmt: skip
        started = time.perf_counter()
        max_tokens = min(max_tokens, self.max_tokens or max_tokens)
        if max_tokens < 1:
            raise InvalidInput(f"max_tokens must be at least 1, got {max_tokens}")  # llama.cpp reads 0 as unbounded
        llm, lock = self._llama()
        grammar = self._grammar(schema)
        prompt = self.tokens(messages)
        budget = llm.n_ctx() - len(prompt)
        if budget < min(max_tokens, 256):
            raise PromptTooLong(f"prompt of {len(prompt)} tokens leaves too little room in a {llm.n_ctx()}-token context",
                                tokens=len(prompt) + min(max_tokens, 256), limit=llm.n_ctx())  # fmt: skip

        def attempt(i: int) -> tuple[str, int, int]:
            with lock:
                if not self.reuse_prefix:
                    llm.reset()  # forget the cached prefix: every call re-evaluates the whole prompt
                out = llm.create_completion(
                    prompt=prompt, grammar=grammar, max_tokens=min(max_tokens, budget),
                    temperature=self.temperature if i == 0 else max(self.temperature, 0.7), seed=self.seed + i,
                )  # fmt: skip
            usage = out["usage"]
            return out["choices"][0]["text"], usage["prompt_tokens"], usage["completion_tokens"]

        done = retry_until_parsed(f"{Path(self.ref).name}", self.retries, attempt, parse)
        done.seconds = time.perf_counter() - started  # tokenizing the prompt is model work too
        return done


class OpenAICompatible:
    """An OpenAI-compatible /v1/chat/completions server: llama-server, vLLM, Ollama, llama_cpp.server.

    The schema is sent as `response_format={"type": "json_schema", ...}`; servers that only
    know llama-cpp-python's `{"type": "json_object", "schema": ...}` are detected on the
    first refusal and served that form from then on.
    """

    def __init__(self, base_url: str, model: str = "default", *, api_key_env: str = "OPENAI_API_KEY",
                 timeout: float = 120.0, temperature: float = 0.0, retries: int = 2, seed: int = 0,
                 max_tokens: int | None = None) -> None:  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.max_tokens = max_tokens  # a cap over what each agent asks for
        self.model, self.api_key_env, self.timeout = model, api_key_env, timeout
        self.temperature, self.retries, self.seed = temperature, retries, seed
        self._format: str | None = None

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if key := os.environ.get(self.api_key_env):
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", json.dumps(body).encode(), headers)
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            return json.load(response)

    def _format_for(self, schema: dict[str, Any], kind: str) -> dict[str, Any]:
        if kind == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "memr1", "schema": schema, "strict": True}}
        return {"type": "json_object", "schema": schema}

    def complete(self, messages: Sequence[dict[str, str]], schema: dict[str, Any], *, parse: Callable[[Any], T],
                 max_tokens: int = 512) -> Completion:  # fmt: skip
        def attempt(i: int) -> tuple[str, int, int]:
            body = {"model": self.model, "messages": list(messages), "max_tokens": min(max_tokens, self.max_tokens or max_tokens),
                    "temperature": self.temperature if i == 0 else max(self.temperature, 0.7), "seed": self.seed + i}  # fmt: skip
            for kind in [self._format] if self._format else ["json_schema", "json_object"]:
                try:
                    data = self._post({**body, "response_format": self._format_for(schema, kind)})
                except urllib.error.HTTPError as e:
                    if self._format is None and kind == "json_schema":
                        continue  # llama_cpp.server answers 500, others 400/422: try the other form
                    raise ModelNotAvailable(f"{self.base_url} answered HTTP {e.code}: {e.read()[:300]!r}") from None
                except (urllib.error.URLError, TimeoutError, OSError) as e:
                    raise ModelNotAvailable(f"cannot reach {self.base_url}: {e}") from None
                self._format = kind
                usage = data.get("usage") or {}
                text = ((data.get("choices") or [{}])[0].get("message") or {}).get("content") or ""
                return text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
            raise ModelNotAvailable(f"{self.base_url} accepts neither json_schema nor json_object response formats")

        return retry_until_parsed(f"{self.base_url} ({self.model})", self.retries, attempt, parse)


def as_llm(spec: LLM | str | os.PathLike[str] | None, *, slot: str, base_url: str | None = None,
           n_threads: int | None = None) -> LLM:  # fmt: skip
    """An LLM from an instance, a GGUF path/HF ref, or a server model name when `base_url` is set."""
    if isinstance(spec, LLM):
        return spec
    if base_url:
        return OpenAICompatible(base_url, os.fspath(spec) if spec else "default")
    return LlamaCpp(spec if spec is not None else DEFAULT_CHAT_MODEL, slot=slot, n_threads=n_threads)
