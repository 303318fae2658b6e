"""Real instruct and embedding models from ../shared (skipped without it): what random weights cannot show."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from memr1 import Memory

from .conftest import MINILM, SMOLLM2, needs_minilm, needs_smollm2

pytestmark = [needs_minilm, needs_smollm2]


@pytest.fixture
def smol(bank: Path):
    with Memory(bank, embedder=MINILM, manager=SMOLLM2, answerer=SMOLLM2) as mem:
        yield mem


def test_a_quantized_model_observes_and_answers(smol: Memory) -> None:
    """SmolLM2 is Q4_1: on a CPU that advertises AMX without enabling it, this died with SIGILL (issue 10)."""
    smol.observe("I adopted a dog named Buddy.", speaker="Andrew", at="2023-05-08T13:56", user="andrew")
    smol.add("Andrew adopted a dog named Buddy.", user="andrew")
    answer = smol.ask("What is the name of Andrew's dog?", user="andrew")
    assert answer.retrieved >= 1 and answer.llm_calls >= 1 and answer.text
    assert smol.check() == []


def test_smollm2_remembers_buddy_and_stores_no_small_talk(smol: Memory, caplog: pytest.LogCaptureFixture) -> None:
    """Before the fact-first contract, SmolLM2 deleted ids 1-8 on an empty bank and stored nothing (issue 11)."""
    caplog.set_level(logging.WARNING, logger="memr1")
    hello = smol.observe("Hey, how are you?", speaker="Andrew", at="2023-05-08T13:55", user="andrew")
    assert [op.kind for op in hello if op.kind != "NOOP"] == [] and smol.list(user="andrew") == []
    buddy = smol.observe("I adopted a dog named Buddy.", speaker="Andrew", at="2023-05-08T13:56", user="andrew")
    assert "ADD" in [op.kind for op in buddy]
    assert any("Buddy" in m.text for m in smol.list(user="andrew"))
    assert smol.usage["llm_calls"] == 2  # every output parsed the first time: no retry
    assert not [r for r in caplog.records if "which was not shown" in r.getMessage()]
    answer = smol.ask("What is the name of Andrew's dog?", user="andrew", sources="both")
    assert answer.retrieved >= 2 and answer.text  # the memory and the raw turn both reach the answer agent
