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
