"""The agent commands of the memr1 CLI, on the real llama.cpp path with tiny local models."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from memr1.cli import cli


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_demo_runs_end_to_end_with_tiny_models() -> None:
    out = invoke("demo", "--tiny")
    assert "I adopted another dog, Scout!" in out and "Q: How many dogs does Andrew have?" in out
    assert "LLM calls: 2" in out or "LLM calls: 3" in out  # 2 observes, plus an ask when anything was stored


def test_observe_ask_and_ingest(tmp_path: Path, tiny_embedder: Path, tiny_chat: Path) -> None:
    common = [
        "--db",
        str(tmp_path / "a.db"),
        "--embedder",
        str(tiny_embedder),
        "--manager",
        str(tiny_chat),
        "--answerer",
        str(tiny_chat),
    ]
    ops = json.loads(
        invoke(
            "observe",
            "I adopted a dog named Buddy.",
            "--speaker",
            "Andrew",
            "--user",
            "andrew",
            "--at",
            "2023-05-08",
            *common,
            "--json",
        )
    )
    assert isinstance(ops, list)
    turns = tmp_path / "dialogue.jsonl"
    turns.write_text(
        "\n".join(
            json.dumps({"text": t, "speaker": "Andrew", "session": "s1"})
            for t in ["I love hiking.", "My sister lives in Paris.", "haha"]
        )
    )
    summary = json.loads(invoke("ingest", str(turns), "--user", "andrew", *common, "--json"))
    assert summary["turns"] == 3 and summary["llm_calls"] == 3
    answer = json.loads(invoke("ask", "Where does the sister live?", "--user", "andrew", *common, "--json"))
    assert set(answer) >= {"text", "selected", "retrieved", "prompt_tokens", "completion_tokens", "seconds"}
    stats = json.loads(invoke("stats", "--db", str(tmp_path / "a.db"), "--json"))
    assert stats["turns"] == 4


def test_ingest_rejects_a_malformed_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"speaker": "no text"}\n')
    result = CliRunner().invoke(cli, ["ingest", str(bad), "--db", str(tmp_path / "x.db")])
    assert result.exit_code != 0 and "text" in result.output
