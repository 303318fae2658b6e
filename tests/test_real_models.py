"""Real instruct and embedding models from ../shared (skipped without it): what random weights cannot show."""

from __future__ import annotations

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
