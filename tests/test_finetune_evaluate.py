"""finetune.evaluate scores Answer Agent GGUFs as memr1 runs them (llama.cpp, greedy, grammar) and compares them.

Random-weight models: the answers are nonsense, so this checks the path and the arithmetic, not quality
(the real before/after is in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from finetune import data, evaluate


def examples(distill: bool) -> list[data.AnswerExample]:
    turns = [
        data.Mem(id=3, text="Andrew: I adopted a dog named Buddy.", at=datetime(2023, 5, 8), kind="turn"),
        data.Mem(id=9, text="Andrew: We went hiking last weekend.", at=datetime(2023, 6, 1), kind="turn"),
    ]
    return [
        data.AnswerExample(
            conversation="conv-30",
            question=q,
            answer=gold,
            category=4,
            asked_on=datetime(2023, 7, 1),
            memories=turns,
            sources="turns",
            k=2,
        ).as_asked(2, distill)
        for q, gold in (("What is the name of Andrew's dog?", "Buddy"), ("What did Andrew do last weekend?", "hiking"))
    ]


@pytest.mark.parametrize("distill", [False, True])
def test_the_same_model_twice_differs_by_nothing(tiny_chat, distill):
    result = evaluate.compare({"base": str(tiny_chat), "again": str(tiny_chat)}, examples(distill), threads=1)
    assert result["summary"]["base"]["count"] == 2
    assert result["summary"]["base"] == result["summary"]["again"]  # greedy: the same answers
    assert result["differences"]["again - base"] == {"f1": 0.0, "low": 0.0, "high": 0.0}
    for row in result["rows"]["base"]:
        assert isinstance(row["answer"], str) and 0.0 <= row["f1"] <= 1.0 and row["prompt_tokens"] > 0


def test_command_line_writes_the_comparison(tiny_chat, tmp_path):
    folder = tmp_path / "data"
    (folder / "val").mkdir(parents=True)
    (folder / "val" / "answer.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in examples(True)))
    out = tmp_path / "validation.json"
    evaluate.main(
        ["--data", str(folder), "--k", "2", "--model", f"base={tiny_chat}", "--out", str(out), "--threads", "1"]
    )
    saved = json.loads(out.read_text())
    assert saved["k"] == 2 and saved["distill"] is False and saved["summary"]["base"]["count"] == 2
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(folder), "--model", "nameonly", "--out", str(out)])


def test_managers_are_scored_through_the_frozen_answerer(tiny_chat, tiny_embedder):
    """Each decision is applied to a copy of the example's bank and its questions asked there; ops are counted."""
    from finetune.rewards import ManagerReward

    from memr1.llm import LlamaCpp

    bank = [data.Mem(id=1, text="Andrew: I adopted a dog named Buddy.", at=datetime(2023, 5, 8))]
    example = data.ManagerExample(
        conversation="conv-30",
        dia_id="D2:1",
        text="I adopted another dog, Scout.",
        speaker="Andrew",
        at=datetime(2023, 6, 1),
        session="session_2",
        asked_on=datetime(2023, 7, 1),
        related=bank,
        bank=bank,
        questions=[data.Question(question="What are Andrew's dogs called?", answer="Buddy and Scout", category=4)],
    )
    reward = ManagerReward(LlamaCpp(tiny_chat, slot="frozen", n_threads=1), tiny_embedder, "f1", k=5)
    result = evaluate.compare({"base": str(tiny_chat), "again": str(tiny_chat)}, [example, example], reward=reward)
    summary = result["summary"]["base"]
    assert summary["count"] == 2 and summary == result["summary"]["again"]
    rows = result["rows"]["base"]
    for kind in ("ADD", "UPDATE", "DELETE", "NOOP"):  # two decisions of one turn id: counted over one turn
        assert summary[f"{kind.lower()}_per_turn"] == sum(r["ops"].get(kind, 0) for r in rows)
    assert result["rows"]["base"][0]["turn"] == "D2:1"
    with pytest.raises(ValueError, match="ManagerReward"):
        evaluate.compare({"base": str(tiny_chat)}, [example])
