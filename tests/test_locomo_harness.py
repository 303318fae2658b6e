"""The LoCoMo harness end to end on tiny llama.cpp models: every method, every report, resuming."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from memr1 import bench_locomo as locomo
from memr1.tiny_models import write_chat_model
from tests.conftest import LOCOMO, needs_locomo

pytestmark = needs_locomo


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_embedder: Path):
    out = tmp_path_factory.mktemp("locomo")
    # seed 5's random weights happen to emit ADDs (and some unusable output), so the bank is not empty
    tiny_chat = write_chat_model(out / "tiny-chat-5.gguf", seed=5)
    argv = [
        "--data",
        str(LOCOMO),
        "--out",
        str(out),
        "--conversations",
        "conv-26",
        "--max-sessions",
        "1",
        "--limit",
        "2",
        "--method",
        "all",
        "--manager",
        str(tiny_chat),
        "--answerer",
        str(tiny_chat),
        "--embedder",
        str(tiny_embedder),
        "--judge",
        str(tiny_chat),
        "--max-ctx",
        "2048",
        "--quiet",
        "--sources",
        "both",
    ]
    assert locomo.main(argv) == 0
    return out, argv


def test_every_report_is_written(run) -> None:
    out, _ = run
    for name in ("results.json", "report.md", "categories.png", "latency.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "categories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == set(locomo.METHODS)
    session_1 = [t for t in json.loads(LOCOMO.read_text())[0]["conversation"]["session_1"]]
    for name, m in results["methods"].items():
        assert m["summary"]["overall"]["count"] == 2, name
        assert m["summary"]["overall"]["j"] is not None  # a judge was given, so J is reported
        for q in m["questions"]:
            assert {"prediction", "gold", "selected", "f1", "b1", "em", "j", "prompt_tokens", "seconds"} <= set(q)
            assert 0 <= q["f1"] <= 1 and q["category"] in (1, 2, 3, 4)
        per_turn = m["costs"]["turn"]
        assert per_turn["count"] == (len(session_1) if name != "full-context" else 0), name
    memr1 = results["methods"]["memr1"]
    assert memr1["costs"]["turn"]["llm_calls"] >= 1  # one manager call per observed turn, more on retries
    with sqlite3.connect(out / "banks" / "memr1" / "conv-26.db") as bank:  # every turn is searchable by ask
        assert bank.execute("SELECT count(*) FROM turns").fetchone()[0] == len(session_1)
        assert bank.execute("SELECT count(*) FROM turn_vectors").fetchone()[0] == len(session_1)
    # random weights make up facts the parser refuses, but the raw turns are there: every question reached the
    # answer agent, answered or refused as unusable output
    assert all(q["llm_calls"] >= 1 or "ModelOutputError" in q.get("error", "") for q in memr1["questions"])
    assert results["methods"]["rag"]["costs"]["turn"]["llm_calls"] == 0  # raw turns, no manager
    report = (out / "report.md").read_text()
    assert "| Method | single-hop F1 | single-hop B1 | single-hop J |" in report
    assert all(f"| {name} |" in report for name in locomo.METHODS)


def test_full_context_drops_the_oldest_turns_to_fit(run) -> None:
    out, _ = run
    full = json.loads((out / "results.json").read_text())["methods"]["full-context"]
    turns = len(json.loads(LOCOMO.read_text())[0]["conversation"]["session_1"])
    assert all(0 < q["retrieved"] < turns for q in full["questions"])  # 2048 tokens cannot hold session 1


def test_questions_are_only_those_the_ingested_sessions_answer(run) -> None:
    out, _ = run
    for q in json.loads((out / "results.json").read_text())["methods"]["memr1"]["questions"]:
        assert q["evidence"] and all(e.startswith("D1:") for e in q["evidence"])


def test_a_rerun_resumes_instead_of_redoing(run) -> None:
    out, argv = run
    logs = [out / "memr1" / "predictions.jsonl", out / "banks" / "memr1" / "conv-26.turns.jsonl"]
    before = [p.read_text() for p in logs]
    assert locomo.main(argv) == 0
    assert [p.read_text() for p in logs] == before
    with pytest.raises(SystemExit, match="made with"):  # other models would blend two runs' results
        locomo.main(
            [
                *argv[: argv.index("--answerer")],
                "--answerer",
                str(out / "other.gguf"),
                *argv[argv.index("--answerer") + 2 :],
            ]
        )


def test_a_line_cut_by_a_kill_is_dropped_and_redone(tmp_path: Path) -> None:
    log = tmp_path / "p.jsonl"
    log.write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c', encoding="utf-8")  # killed mid-write
    assert [r["key"] for r in locomo.read_jsonl(log)] == ["a", "b"]
    locomo.append_jsonl(log, {"key": "c"})
    assert [r["key"] for r in locomo.read_jsonl(log)] == ["a", "b", "c"]
