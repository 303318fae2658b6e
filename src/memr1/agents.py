"""The two agents: the Memory Manager turns a turn into changes, the Answer Agent a question into an answer.

Each owns its prompt builder, schema, parser and token budget (all from `prompts`), and both share
what any backend needs around one generation: asking again when the output is unusable, and
showing fewer items when the prompt does not fit. Neither touches the bank: `Memory` retrieves
what they are shown and applies what the manager decides.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, TypeVar

from . import prompts
from .errors import InvalidInput, ModelOutputError, PromptTooLong
from .llm import Backend, Completion, Request
from .schema import MemoryItem, StoredTurn, Turn

log = logging.getLogger("memr1.agents")
T = TypeVar("T")
DEFAULT_RETRIES = 2
RETRY_TEMPERATURE = 0.7  # a greedy model repeats its unusable output; a retry samples
OUTPUT_ROOM = 256  # tokens a prompt must leave free: every answer and every manager decision fits in them
MANAGER_MAX_TOKENS = 320  # three facts of up to 200 characters, in JSON: the grammar closes it before this
ANSWER_MAX_TOKENS = 256


class Shown(NamedTuple):
    """An item an agent may be shown: a memory or a raw turn, under a key that says which."""

    key: int | tuple[str, int]  # a memory id; with turns among the items, ("memory" | "turn", id)
    text: str
    at: datetime | None
    item: MemoryItem | StoredTurn | Any


def complete(
    backend: Backend,
    messages: Sequence[dict[str, str]],
    schema: dict[str, Any],
    *,
    parse: Callable[[Any], T],
    max_tokens: int,
) -> Completion:
    """`backend.generate` until `parse` accepts its text, `retries` more times at most; tokens and time are
    summed over every try. Unusable output after the last try raises ModelOutputError, so no caller ever
    acts on half-parsed output. A prompt the context cannot hold raises PromptTooLong before any call."""
    name = repr(backend)
    retries = getattr(backend, "retries", DEFAULT_RETRIES)
    temperature, seed = getattr(backend, "temperature", 0.0), getattr(backend, "seed", 0)
    max_tokens = min(max_tokens, getattr(backend, "max_tokens", None) or max_tokens)
    if max_tokens < 1:
        raise InvalidInput(f"max_tokens must be at least 1, got {max_tokens}")
    limit, tokens = backend.context_length(), backend.count_tokens(messages)
    if limit is not None and tokens is not None:
        if limit - tokens < min(max_tokens, OUTPUT_ROOM):
            raise PromptTooLong(
                f"prompt of {tokens} tokens leaves too little room in a {limit}-token context",
                tokens=tokens + min(max_tokens, OUTPUT_ROOM),
                limit=limit,
            )
        max_tokens = min(max_tokens, limit - tokens)
    start, prompt_tokens, completion_tokens, reasons = time.perf_counter(), 0, 0, []
    deadline = getattr(backend, "deadline", contextlib.nullcontext)
    with deadline():  # a server's timeout bounds the call, retries included
        for i in range(retries + 1):
            sampled = temperature if i == 0 else max(temperature, RETRY_TEMPERATURE)
            out = backend.generate(Request(messages, schema, max_tokens, sampled, seed + i))
            prompt_tokens, completion_tokens = (
                prompt_tokens + out.prompt_tokens,
                completion_tokens + out.completion_tokens,
            )
            try:
                value = parse(out.text)
            except prompts.OutputRejected as e:
                reasons.append(str(e))
                log.warning("%s: output rejected (attempt %d of %d): %s", name, i + 1, retries + 1, e)
                continue
            return Completion(value, out.text, prompt_tokens, completion_tokens, time.perf_counter() - start, i + 1)
    log.error("%s: refused after %d unusable outputs; nothing was written", name, retries + 1)
    raise ModelOutputError(f"{name} gave unusable output {retries + 1} times; last: {reasons[-1]}", reasons=reasons)


def consult(
    backend: Backend,
    items: Sequence[Shown],
    *,
    build: Callable[[list[prompts.Shown]], list[dict[str, str]]],
    schema: Callable[[list[prompts.Shown]], dict[str, Any]],
    parse: Callable[[Any, list[prompts.Shown], list[Any]], T],
    max_tokens: int,
    keep: Literal["first", "last"] = "first",
) -> tuple[Completion, int]:
    """One constrained call about `items`, shown under small ids, and how many were shown: as many of the
    first (the best-ranked) as the context holds, or of the last (the newest, for a transcript). The schema
    is built for what is shown, so the grammar cannot name an id that was not."""
    items = list(items)
    while True:
        shown = prompts.shown_memories([(i.key, i.text, i.at) for i in items])
        keys = [i.key for i in items]
        try:
            done = complete(
                backend,
                build(shown),
                schema(shown),
                parse=lambda raw, shown=shown, keys=keys: parse(raw, shown, keys),  # type: ignore[misc]
                max_tokens=max_tokens,
            )
            return done, len(items)
        except PromptTooLong as e:
            if not items:
                raise
            n = max(min(len(items) - 1, int(len(items) * e.limit / e.tokens)), 0)
            log.info("prompt of %d tokens exceeds %d: keeping %d of %d items", e.tokens, e.limit, n, len(items))
            items = items[:n] if keep == "first" else items[len(items) - n :]


@dataclass
class Decision:
    """What the Memory Manager made of one turn: the plan in bank ids, the memories it saw, the call's cost."""

    plan: prompts.ManagerPlan
    shown: list[MemoryItem]  # those it may change: the plan names no other
    completion: Completion


class MemoryManager:
    """Reads a turn beside the memories related to it and decides what to ADD, UPDATE, DELETE or leave."""

    def __init__(self, backend: Backend, *, max_tokens: int = MANAGER_MAX_TOKENS) -> None:
        self.backend, self.max_tokens = backend, max_tokens

    def decide(self, turn: Turn, related: Sequence[MemoryItem]) -> Decision:
        """One constrained call: it can name only the memories shown (as many of `related` as fit)."""
        completion, n = consult(
            self.backend,
            [Shown(m.id, m.text, m.at, m) for m in related],
            build=lambda shown: prompts.manager_messages(
                turn.text, speaker=turn.speaker, at=turn.at, session=turn.session, memories=shown
            ),
            schema=lambda shown: prompts.manager_schema([m.id for m in shown]),
            parse=lambda raw, shown, ids: prompts.parse_manager(
                raw, shown, ids, turn=turn.text, speaker=turn.speaker, at=turn.at
            ),
            max_tokens=self.max_tokens,
        )
        return Decision(completion.value, list(related[:n]), completion)


@dataclass
class Reply:
    """The Answer Agent's answer, the keys of the items it selected, and the call's cost."""

    text: str
    selected: list[Any]
    completion: Completion
    shown: int  # the items that fit the context, of those given


class AnswerAgent:
    """Answers a question from retrieved items: distils the few that matter (by id), then answers briefly."""

    def __init__(self, backend: Backend, *, max_tokens: int = ANSWER_MAX_TOKENS) -> None:
        self.backend, self.max_tokens = backend, max_tokens

    def answer(
        self,
        question: str,
        items: Sequence[Shown],
        *,
        now: datetime | None = None,
        distill: bool = True,
        keep: Literal["first", "last"] = "first",
    ) -> Reply:
        """`distill=False` is the paper's ablation: the model answers from every item without selecting.
        `keep` says which items stay when not all fit: the first (best-ranked) or the last (newest)."""
        completion, n = consult(
            self.backend,
            items,
            build=lambda shown: prompts.answer_messages(question, memories=shown, now=now, distill=distill),
            schema=(lambda shown: prompts.answer_schema(len(shown)))
            if distill
            else (lambda shown: prompts.DIRECT_ANSWER_SCHEMA),
            parse=prompts.parse_answer if distill else prompts.parse_direct_answer,
            max_tokens=self.max_tokens,
            keep=keep,
        )
        text, selected = completion.value
        return Reply(text, list(selected), completion, n)
