"""LongMemEval and MSC loaders, on small files written here in each dataset's official format."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from memr1 import datasets


def longmemeval_row(qid: str = "e47becba", *, shuffled: bool = False) -> dict:
    sessions = [
        [
            {
                "role": "user",
                "content": "I just graduated with a degree in Business Administration!",
                "has_answer": True,
            },
            {"role": "assistant", "content": "Congratulations!"},
        ],
        [
            {"role": "user", "content": "Any tips for a trip to Lisbon?"},
            {"role": "assistant", "content": "Try pastel de nata."},
        ],
    ]
    dates, ids = ["2023/05/20 (Sat) 02:21", "2023/05/27 (Sat) 18:03"], ["answer_4be1b6b4_1", "sharegpt_yywfeR2_0"]
    if shuffled:  # longmemeval_oracle.json does not sort its sessions
        sessions, dates, ids = sessions[::-1], dates[::-1], ids[::-1]
    return {
        "question_id": qid,
        "question_type": "single-session-user",
        "question": "What degree did I graduate with?",
        "answer": "Business Administration",
        "question_date": "2023/05/30 (Tue) 23:40",
        "haystack_session_ids": ids,
        "haystack_dates": dates,
        "haystack_sessions": sessions,
        "answer_session_ids": ["answer_4be1b6b4_1"],
    }


@pytest.mark.parametrize("shuffled", [False, True])
def test_longmemeval_instances_keep_order_dates_and_evidence(tmp_path: Path, shuffled: bool) -> None:
    path = tmp_path / "longmemeval_s.json"
    path.write_text(json.dumps([longmemeval_row(shuffled=shuffled), longmemeval_row("gpt4_2655b836_abs")]))
    first, abstention = datasets.load_longmemeval(path)
    assert first.question == "What degree did I graduate with?" and first.answer == "Business Administration"
    assert first.question_type in datasets.LONGMEMEVAL_TYPES and not first.abstention and abstention.abstention
    assert first.question_date == datetime(2023, 5, 30, 23, 40)
    assert [t.text for t in first.turns][0].startswith("I just graduated")  # sessions in time order
    assert [(t.session, t.speaker, t.at.day) for t in first.turns] == [
        (1, "user", 20),
        (1, "assistant", 20),
        (2, "user", 27),
        (2, "assistant", 27),
    ]
    assert first.evidence_turns == ("answer_4be1b6b4_1:0",) and first.evidence_sessions == ("answer_4be1b6b4_1",)


def test_longmemeval_rejects_ragged_haystacks_and_odd_dates(tmp_path: Path) -> None:
    row = longmemeval_row()
    row["haystack_dates"] = row["haystack_dates"][:1]
    with pytest.raises(ValueError, match="differ in length"):
        datasets.longmemeval_instance(row)
    with pytest.raises(ValueError, match="unrecognised LongMemEval date"):
        datasets.longmemeval_date("May 20th")


def msc_row(**extra) -> dict:
    return {
        "personas": [["I have two cats."], ["I am a nurse."]],
        "previous_dialogs": [
            {
                "personas": [],
                "dialog": [
                    {"id": "Speaker 1", "text": "I adopted a second cat."},
                    {"id": "Speaker 2", "text": "What is her name?"},
                ],
                "time_num": 0,
                "time_unit": "days",
            },
            {
                "personas": [],
                "dialog": [{"text": "My night shifts are hard."}, {"text": "Nursing is tough."}],
                "time_num": 3,
                "time_unit": "days",
            },
        ],
        "dialog": [{"id": "Speaker 1", "text": "Back from a week off!"}],
        "metadata": {"initial_data_id": "train:ordered_1"},
        **extra,
    }


@pytest.mark.parametrize("as_list", [False, True])
def test_msc_self_instruct_rows_become_dated_turns_and_a_probe(tmp_path: Path, as_list: bool) -> None:
    rows = [msc_row(self_instruct={"B": "How many cats do I have?", "A": "Two"}), msc_row(time_num=1, time_unit="days")]
    path = tmp_path / "msc_self_instruct.jsonl"
    path.write_text(json.dumps(rows) if as_list else "\n".join(json.dumps(r) for r in rows) + "\n")
    first, original = datasets.load_msc(path)
    assert (first.question, first.answer, first.episode_id) == ("How many cats do I have?", "Two", "train:ordered_1")
    assert original.question == "" and original.answer == ""  # an original ParlAI MSC row has no probe
    assert [(t.session, t.speaker) for t in first.turns] == [
        (1, "Speaker 1"),
        (1, "Speaker 2"),
        (2, "Speaker 1"),
        (2, "Speaker 2"),
        (3, "Speaker 1"),
    ]
    sessions = {t.session: t.at for t in first.turns}
    assert sessions[3] == datasets.MSC_ANCHOR and sessions[2] - sessions[1] == timedelta(days=3)
    assert first.personas == (("I have two cats.",), ("I am a nurse.",))
    gaps = {t.session: t.at for t in original.turns}  # this row says the current session came a day later
    assert gaps[3] - gaps[2] == timedelta(days=1)
