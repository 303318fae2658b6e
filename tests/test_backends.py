"""The backend protocol: a backend only generates; retries and fitting the context live once, above it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from memr1 import Backend, Generation, LlamaCpp, Memory, ModelOutputError, Request, prompts
from memr1.agents import RETRY_TEMPERATURE, complete


class FromScratch:
    """A backend written without memr1's base class: the protocol's three methods, around a real llama.cpp
    model, as a user's own backend (another runtime, a hosted API) would wrap theirs."""

    def __init__(self, inner: LlamaCpp, *, context: int | None = None, garbage: int = 0) -> None:
        self.inner, self.context, self.garbage = inner, context, garbage
        self.calls: list[dict] = []

    def generate(self, request: Request) -> Generation:
        self.calls.append({"temperature": request.temperature, "seed": request.seed, "max_tokens": request.max_tokens})
        if len(self.calls) <= self.garbage:
            return Generation("{not json", 1, 1)
        return self.inner.generate(request)

    def context_length(self):
        return self.context

    def count_tokens(self, messages):
        return self.inner.count_tokens(messages) if self.context else None


@pytest.fixture
def llama(tiny_chat: Path) -> LlamaCpp:
    return LlamaCpp(tiny_chat, slot="scratch", retries=0)


def test_a_backend_is_three_methods_and_drives_both_agents(bank: Path, tiny_embedder: Path, llama: LlamaCpp) -> None:
    manager, answerer = FromScratch(llama), FromScratch(llama)
    assert isinstance(manager, Backend)
    with Memory(bank, embedder=tiny_embedder, manager=manager, answerer=answerer) as mem:
        mem.add("Andrew adopted a dog named Buddy.")
        try:
            mem.observe("I adopted another dog, Scout!", speaker="Andrew")
        except ModelOutputError:  # random weights: unusable output is allowed, the call path is what is tested
            pass
        try:
            mem.ask("How many dogs does Andrew have?")
        except ModelOutputError:
            pass
    assert manager.calls and answerer.calls


def test_retries_are_the_agents_work_for_any_backend(llama: LlamaCpp) -> None:
    backend = FromScratch(llama, garbage=2)
    backend.retries, backend.seed = 2, 40  # sampling defaults a backend may carry
    shown = prompts.shown_memories([(3, "Andrew has a dog.", None)])
    done = complete(
        backend,
        prompts.answer_messages("Pets?", memories=shown),
        prompts.answer_schema(1),
        parse=lambda raw: prompts.parse_answer(raw, shown, [3]),
        max_tokens=64,
    )
    assert done.attempts == 3
    assert [c["seed"] for c in backend.calls] == [40, 41, 42]
    assert backend.calls[0]["temperature"] == 0.0
    assert all(c["temperature"] >= RETRY_TEMPERATURE for c in backend.calls[1:])


def test_unusable_output_after_the_last_retry_is_refused(llama: LlamaCpp) -> None:
    backend = FromScratch(llama, garbage=10)
    with pytest.raises(ModelOutputError, match="3 times"):
        complete(
            backend, [{"role": "user", "content": "hi"}], prompts.ANSWER_SCHEMA, parse=prompts.parse_json, max_tokens=8
        )


def test_a_backend_that_counts_tokens_is_fitted_before_it_is_called(
    bank: Path, tiny_embedder: Path, llama: LlamaCpp, caplog
) -> None:
    """The backend never sees a prompt its context cannot hold: the agents show fewer memories."""
    answerer = FromScratch(llama, context=1600)
    with Memory(bank, embedder=tiny_embedder, answerer=answerer) as mem:
        for i in range(40):
            mem.add(f"Fact {i}: Andrew walked his dog Buddy along the river on a sunny day.")
        with caplog.at_level(logging.INFO, logger="memr1.agents"):
            try:
                mem.ask("Where does Andrew walk his dog?", k=40, sources="memories")
            except ModelOutputError:
                pass
    assert any("exceeds 1600" in r.getMessage() for r in caplog.records)
    assert answerer.calls and all(c["max_tokens"] <= 1600 for c in answerer.calls)
