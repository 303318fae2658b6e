"""`Memory`: a `Bank` with the two agents, composed for `observe` and `ask`.

observe(turn): bank.search(turn) -> MemoryManager.decide(turn, related) -> bank.apply(plan, turn)
ask(question): bank.recall(question) -> AnswerAgent.answer(question, items) -> Answer
"""

from __future__ import annotations

import builtins
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from . import prompts
from .agents import AnswerAgent, MemoryManager
from .bank import DEFAULT_USER, SOURCES, Bank, Sources, _first_error, turn_line
from .config import Config
from .embedding import Embedder
from .errors import Conflict, InvalidInput
from .llm import Backend, Completion, check_server_options
from .schema import (
    Answer,
    MemoryItem,
    Operation,
    StoredTurn,
    Turn,
    check_label,
    check_metadata,
    check_text,
    check_user,
    parse_time,
)

__all__ = ["DEFAULT_DISTILL", "DEFAULT_SOURCES", "DEFAULT_USER", "Memory", "turn_line"]
log = logging.getLogger("memr1")
# Measured on LoCoMo's validation conversation (conv-30, first 3 sessions, Qwen2.5-Coder-1.5B as both agents, k=30):
# turns F1 40.8, both 32.6, memories 14.0 (RESULTS.md). Revisit once the manager is trained (issue 14).
DEFAULT_SOURCES: Sources = "turns"
# Measured on the whole validation conversation (conv-30, 81 questions, Qwen2.5-Coder-1.5B as both agents, k=18):
# answering from every item scored F1 55.4, distilling first 43.1 (paired difference 12.2, 95% interval 6.0-18.6),
# rag at k=60 44.5 (RESULTS.md). An untrained model selects worse than it reads; revisit once the Answer Agent is
# trained to distil (issue 14).
DEFAULT_DISTILL = False
OBSERVE_ATTEMPTS = 5  # a turn re-decided on fresh memories when concurrent writers changed the ones it touches
# Chat messages ({"role", "content"}, as mem0's add takes them) are turns; these roles are not conversation.
SKIPPED_ROLES = ("system", "tool", "developer")


class Memory(Bank):
    """A memory bank in one SQLite file, with a Memory Manager that decides what to remember of each turn
    (`observe`) and an Answer Agent that answers from it (`ask`). Everything `Bank` does works without
    loading either model.

    `user` scopes every call. A name means that user's data only: another user's memory is not found.
    `user=None` means no restriction by user, where a call allows it (`list`, `search`, `get`, `update`,
    `delete`, `history`, `export`); `observe`, `ask`, `add` and `forget` need a user and default to
    "default"."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        embedder: str | os.PathLike[str] | Embedder | None = None,
        manager: Backend | str | os.PathLike[str] | None = None,
        answerer: Backend | str | os.PathLike[str] | None = None,
        base_url: str | None = None,
        server_options: Mapping[str, Any] | None = None,
        related_k: int | None = None,
        busy_timeout: float | None = None,
        threads: int | Mapping[str, int] | None = None,
        config: Config | Mapping[str, Any] | None = None,
    ) -> None:
        """Open (or create) a bank. Models are GGUF paths or `owner/repo/file.gguf` hub references,
        resolved and loaded on first use; with `base_url`, manager/answerer name models on an
        OpenAI-compatible server instead, which `server_options` configure: `timeout` (seconds per
        call, retries included; default 300), `max_response_bytes` (default 8 MiB), `api_key` (default
        $OPENAI_API_KEY) and `api_key_env`. The embedder is `embedder`, else $MEMR1_EMBEDDER, else the one
        the bank recorded (only if it is already on this machine: a bank does not choose downloads), else
        the default. Any of them may be an instance instead: an `Embedder`, or a `Backend` for an agent.

        `threads` sets llama.cpp threads for the models this bank loads: one count for all, or
        `{"embedder": 1, "manager": 2, "answerer": 2}`. Unset roles follow $MEMR1_<ROLE>_THREADS,
        then $MEMR1_THREADS, then a default (1 for the embedder; the cores, up to 8, for agents).
        Model instances passed in keep their own settings.

        `config` (a `Config`, or a dict as `Config.load` reads it) holds every setting in one place, per-agent
        backend options included: `{"manager": {"model": "m.gguf", "n_gpu_layers": 20}, "answerer": {...}}`.
        Arguments and environment variables follow one rule everywhere, the CLI's too: what is given beats
        the environment, which beats the default."""
        for role, spec in (("manager", manager), ("answerer", answerer)):
            if spec is not None and not isinstance(spec, (str, os.PathLike, Backend)):
                raise InvalidInput(
                    f"{role} must be a model path, a reference or a backend (with a generate method), "
                    f"not {type(spec).__name__}"
                )
        agents: dict[str, Backend | None] = {
            "manager": manager if isinstance(manager, Backend) else None,
            "answerer": answerer if isinstance(answerer, Backend) else None,
        }
        settings = (base_url, server_options, related_k, busy_timeout, threads)
        if config is None:
            options = check_server_options(server_options)
            values: dict[str, Any] = {
                "embedder": None if isinstance(embedder, Embedder) else embedder,
                "base_url": base_url,
                "related_k": related_k,
                "busy_timeout": busy_timeout,
                "threads": threads,
            }
            for role, spec in (("manager", manager), ("answerer", answerer)):
                model = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else None
                values[role] = {"model": model, **options}
            config = Config.load(values)
            if options and not config.base_url:
                raise InvalidInput("server_options configure the server at base_url (or $MEMR1_BASE_URL); none is set")
        elif (
            any(v is not None for v in settings)
            or isinstance(manager, (str, os.PathLike))
            or isinstance(answerer, (str, os.PathLike))
        ):
            raise InvalidInput("pass the settings as arguments or in config, not both (model instances may join it)")
        elif not isinstance(config, Config):
            config = Config.load(config)
        super().__init__(path, embedder=embedder if isinstance(embedder, Embedder) else None, config=config)
        self._manager, self._answerer = agents["manager"], agents["answerer"]
        self.related_k = config.related_k
        self.usage = {"llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "llm_seconds": 0.0, "dropped_ops": 0}
        self._usage_lock = threading.Lock()

    def __enter__(self) -> Memory:
        return self

    # ---- the agents ----

    @property
    def manager(self) -> Backend:
        """The Memory Manager's backend, made on first use."""
        if self._manager is None:
            self._manager = self.config.backend("manager")
        return self._manager

    @property
    def answerer(self) -> Backend:
        """The Answer Agent's backend, made on first use."""
        if self._answerer is None:
            self._answerer = self.config.backend("answerer")
        return self._answerer

    def _count(self, completion: Completion | None = None, *, dropped: int = 0) -> None:
        with self._usage_lock:
            if completion is not None:
                self.usage["llm_calls"] += completion.attempts
                self.usage["prompt_tokens"] += completion.prompt_tokens
                self.usage["completion_tokens"] += completion.completion_tokens
                self.usage["llm_seconds"] += completion.seconds
            self.usage["dropped_ops"] += dropped

    def observe(
        self,
        turn: Turn | str | dict[str, Any] | Iterable[Turn | str | dict[str, Any]],
        *,
        speaker: str | None = None,
        at: datetime | str | None = None,
        session: str | None = None,
        user: str = DEFAULT_USER,
        metadata: dict[str, Any] | None = None,
        progress: bool = False,
    ) -> builtins.list[Operation]:
        """Memory Manager: store the raw turn and apply the ADD/UPDATE/DELETE it implies, all in one transaction.

        A turn is a `Turn`, a str (said by `speaker`, at `at`, ...), a dict of Turn's fields, or a chat
        message `{"role": ..., "content": ..., "name": ...}` as mem0's `add` takes them (the speaker is its
        name, else its role; system and tool messages are skipped). A list of them is observed in order, each
        turn its own transaction; `progress=True` shows a bar. Arguments fill what a turn leaves unset.

        One constrained LLM call per turn. Related memories are shown under small ids; the grammar lets
        the model name no other. If the model's output stays unusable after retries, ModelOutputError is
        raised and nothing is written, not even the turn. If another writer changes or deletes a memory the
        decision updates or deletes before it is applied, the decision is stale: the turn is decided again
        on fresh memories, and after OBSERVE_ATTEMPTS tries Conflict is raised, again with nothing written.
        """
        defaults = {"speaker": speaker, "at": at, "session": session, "user": user, "metadata": metadata}
        if isinstance(turn, (Turn, str, dict)):
            return self._observe_one(_as_turn(turn, defaults))
        if not isinstance(turn, Iterable):
            raise InvalidInput(f"turn must be a Turn, a str, a dict or a list of them, got {type(turn).__name__}")
        from tqdm.auto import tqdm

        turns = [t for t in turn if not _skipped(t)]
        ops: builtins.list[Operation] = []
        for t in tqdm(turns, desc="observe", unit="turn", disable=not progress):
            if not isinstance(t, (Turn, str, dict)):
                raise InvalidInput(f"each turn must be a Turn, a str or a dict, got {type(t).__name__}")
            ops += self._observe_one(_as_turn(t, defaults))
        return ops

    def observe_many(
        self, turns: Iterable[Turn | str | dict[str, Any]], *, user: str = DEFAULT_USER, progress: bool = True
    ) -> builtins.list[Operation]:
        """`observe(turns, progress=True)`: the name before `observe` took lists."""
        return self.observe(turns, user=user, progress=progress)

    ingest = observe_many

    def _observe_one(self, turn: Turn) -> builtins.list[Operation]:
        check_text(turn.text, "turn text"), check_user(turn.user)
        agent = MemoryManager(self.manager)
        for attempt in range(1, OBSERVE_ATTEMPTS + 1):
            # Optimistic concurrency: the model decides on a snapshot, and the write refuses any UPDATE or
            # DELETE whose memory changed since; then the turn is decided again on fresh memories.
            related = self.search(turn.text, self.related_k, user=turn.user) if self.related_k else []
            decision = agent.decide(turn, [h.memory for h in related])
            self._count(decision.completion)
            try:
                ops = self.apply(decision.plan, turn, shown=decision.shown)
            except Conflict as e:
                if attempt == OBSERVE_ATTEMPTS:
                    raise Conflict(f"{e}, {attempt} times in a row; nothing was written. Retry the turn") from None
                log.info("observe: %s; deciding the turn again (attempt %d)", e, attempt + 1)
                time.sleep(random.uniform(0, 0.01 * attempt))  # writers that collided should not collide again
                continue
            self._count(dropped=len(decision.plan.dropped))  # once: a decision made again drops afresh
            return ops
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def ask(
        self,
        question: str,
        *,
        user: str = DEFAULT_USER,
        k: int = 60,
        now: datetime | str | None = None,
        distill: bool = DEFAULT_DISTILL,
        sources: Sources = DEFAULT_SOURCES,
    ) -> Answer:
        """Answer Agent: retrieve up to k items and answer briefly from them.

        `sources` says what is retrieved: the manager's "memories", the raw "turns" as they were said, or
        "both" (the best-ranked of each, alternating), so a fact the manager missed is not lost to ask.
        `distill=True` is the paper's Answer Agent: the model first selects the items that matter (their ids
        are `Answer.selected` and `selected_turns`), then answers. By default it answers from every item shown
        (all of them are `selected` then): with untrained models that scored 12 F1 points higher on LoCoMo's
        validation conversation. A trained Answer Agent distils.
        """
        question, user = check_text(question, "question"), check_user(user)
        if sources not in SOURCES:
            raise InvalidInput(f"sources must be one of {', '.join(SOURCES)}, not {sources!r}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1000:
            raise InvalidInput(f"k must be an int from 1 to 1000, got {k!r}")
        start = time.perf_counter()
        items = self.recall(question, k, user=user, sources=sources)
        if not items:  # nothing to distil: say so instead of letting the model invent
            return Answer(text=prompts.UNKNOWN_ANSWER, seconds=time.perf_counter() - start)
        reply = AnswerAgent(self.answerer).answer(question, items, now=parse_time(now, "now"), distill=distill)
        self._count(reply.completion)
        by_key = {i.key: i.item for i in items}
        chosen = [by_key[key] for key in reply.selected]
        return Answer(
            text=reply.text,
            selected=[i for i in chosen if isinstance(i, MemoryItem)],
            selected_turns=[i for i in chosen if isinstance(i, StoredTurn)],
            retrieved=len(items),
            prompt_tokens=reply.completion.prompt_tokens,
            completion_tokens=reply.completion.completion_tokens,
            llm_calls=reply.completion.attempts,
            seconds=time.perf_counter() - start,
        )


def _skipped(turn: object) -> bool:
    return isinstance(turn, dict) and turn.get("role") in SKIPPED_ROLES


def _as_turn(turn: Turn | str | dict[str, Any], defaults: dict[str, Any]) -> Turn:
    """A Turn from any form `observe` takes; what the turn leaves unset comes from `defaults`."""
    if isinstance(turn, Turn):
        return turn
    if isinstance(turn, str):
        return _make_turn(**defaults, text=turn)
    if "role" in turn or "content" in turn:  # a chat message
        if set(turn) - {"role", "content", "name"}:
            raise InvalidInput(f"a chat message has role, content and name; got {sorted(turn)}"[:200])
        if not isinstance(turn.get("role"), str) or turn.get("role") in SKIPPED_ROLES:
            raise InvalidInput(f"a chat message to observe needs a conversational role, got {turn.get('role')!r}")
        speaker = turn.get("name") or turn["role"]
        return _make_turn(**{**defaults, "speaker": speaker, "text": turn.get("content")})
    return _make_turn(**{**{k: v for k, v in defaults.items() if v is not None}, **turn})


def _make_turn(**fields: Any) -> Turn:
    fields["at"] = parse_time(fields.get("at"))
    fields["metadata"] = check_metadata(fields.get("metadata"))
    fields["speaker"] = check_label(fields.get("speaker"), "speaker")
    fields["session"] = check_label(fields.get("session"), "session")
    try:
        return Turn(**fields)
    except ValidationError as e:
        raise InvalidInput(f"bad turn: {_first_error(e)}") from None
