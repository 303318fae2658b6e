"""Hostile model output on the real llama.cpp path: random-weight models as adversaries of both agents.

Every generation must end in valid operations or a clean, logged refusal with the bank unchanged.
benchmarks/soak_hostile_output.py runs the same harness for 1,000+ generations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks import soak_hostile_output

from memr1 import InvalidInput, Memory, ModelOutputError
from memr1.llm import LlamaCpp
from memr1.testing import ScriptedLLM


def test_random_weight_adversaries_get_valid_ops_or_a_clean_refusal(tmp_path: Path, tiny_embedder: Path) -> None:
    out = soak_hostile_output.run(200, embedder=str(tiny_embedder), workdir=tmp_path, seed=7, models=4)
    assert out["failures"] == [] and out["exceptions"] == 0
    assert out["generations"] == out["calls"] == 200 and out["valid"] + out["refused"] == 200
    assert out["valid"] >= 60 and out["refused"] >= 15  # both endings really happened
    seen = set(out["traits"])
    # what the issue asks to cover, each met at least once by this run
    assert {"cut short / not JSON", "duplicate ids", "empty operation list", "empty text"} <= seen
    assert "out-of-range ids" not in seen  # the grammar is built per call from the ids shown: none can be named
    assert "control characters" in seen
    assert out["traits"]["cut short / not JSON"].get("valid", 0) == 0  # a cut generation is never applied


@pytest.mark.parametrize(
    "reply",
    [
        "",
        " ",
        "\x00",
        "{",
        '{"facts": [',
        '{"facts": null}',
        '{"facts": [{"event": "ADD"}]}',
        "[]",
        '{"facts": [{"event": "ADD", "fact": "x"}], "extra": 1}',
        '"just a string"',
        "NaN",
        "1e999",
        '{"facts": [{"event": "DROP", "id": 0, "fact": "x"}]}',
        "\ud800",
        '{"facts": []}' * 2,
        '{"operations": []}',
    ],
)
def test_empty_and_malformed_replies_are_refused_cleanly(bank: Path, tiny_embedder: Path, reply: str, caplog) -> None:
    """The same through the scripted backend, for outputs a grammar would never let through (other servers may)."""
    with Memory(
        bank, embedder=tiny_embedder, manager=ScriptedLLM([reply] * 3), answerer=ScriptedLLM([reply] * 3)
    ) as mem:
        mem.add("a fact about a dog", user="u")
        before = mem.stats()
        with pytest.raises(ModelOutputError) as refused:
            mem.observe("I have a dog", user="u")
        assert len(refused.value.reasons) == 3 and mem.stats() == before
        with pytest.raises(ModelOutputError):
            mem.ask("What pet?", user="u", sources="memories")
        assert mem.stats() == before and mem.check() == []
    assert any(r.levelname == "ERROR" and "refused" in r.getMessage() for r in caplog.records)


def test_retries_recover_from_a_cut_generation(tmp_path: Path, tiny_embedder: Path, tiny_chat: Path) -> None:
    """With retries, a generation cut at max_tokens is retried, then refused; nothing is written."""
    manager = LlamaCpp(tiny_chat, retries=2, max_tokens=6, slot="cut", seed=3)
    with Memory(tmp_path / "b.db", embedder=tiny_embedder, manager=manager) as mem:
        before = mem.stats()
        with pytest.raises(ModelOutputError, match="3 times") as refused:
            mem.observe("I adopted a dog named Buddy.", user="u")  # 6 tokens cannot hold the smallest valid output
        assert all(r.startswith("not JSON") for r in refused.value.reasons)
        assert mem.stats() == before
    with pytest.raises(InvalidInput, match="max_tokens"):
        LlamaCpp(tiny_chat, max_tokens=0)  # llama.cpp would read 0 as "no limit"
