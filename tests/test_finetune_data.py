"""finetune.data: examples built from LoCoMo-shaped conversations through a real bank, prompts from memr1.prompts."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from finetune import data

from memr1 import Memory, datasets, prompts
from memr1.testing import ScriptedLLM

from .conftest import LOCOMO, needs_locomo


def locomo_sample(sample_id: str = "conv-26") -> dict:
    """A two-session conversation in locomo10.json's shape, with one question per category (5 is left out)."""
    return {
        "sample_id": sample_id,
        "conversation": {
            "speaker_a": "Andrew",
            "speaker_b": "Audrey",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Andrew", "dia_id": "D1:1", "text": "I adopted a dog named Buddy."},
                {"speaker": "Audrey", "dia_id": "D1:2", "text": "Lovely! I went hiking yesterday."},
            ],
            "session_2_date_time": "10:00 am on 2 June, 2023",
            "session_2": [
                {
                    "speaker": "Andrew",
                    "dia_id": "D2:1",
                    "text": "I adopted another dog, Scout!",
                    "blip_caption": "a photo of a puppy",
                },
                {"speaker": "Audrey", "dia_id": "D2:2", "text": "Congratulations!"},
            ],
        },
        "qa": [
            {
                "question": "What are the names of Andrew's dogs?",
                "answer": "Buddy and Scout",
                "evidence": ["D1:1; D2:1"],
                "category": 1,
            },
            {"question": "When did Audrey go hiking?", "answer": "7 May 2023", "evidence": ["D1:2"], "category": 2},
            {
                "question": "What is Audrey's dog called?",
                "adversarial_answer": "Rex",
                "evidence": ["D1:1"],
                "category": 5,
            },
        ],
    }


def turn_of(messages: list[dict[str, str]]) -> dict:
    body = messages[1]["content"].split("<<<TURN\n", 1)[1].split("\nTURN>>>", 1)[0]
    return json.loads(body)


def test_examples_hold_what_observe_and_ask_see(tmp_path, tiny_embedder):
    with Memory(tmp_path / "bank.db", embedder=data.CachedEmbedder(tiny_embedder)) as mem:
        managers, answers = data.build_conversation(locomo_sample(), mem, verbatim=True, progress=False)
        assert [m.text for m in mem.list()] == [
            "Andrew: I adopted a dog named Buddy.",
            "Audrey: Lovely! I went hiking yesterday.",
            "Andrew: I adopted another dog, Scout! [shares a photo: a photo of a puppy]",
            "Audrey: Congratulations!",
        ]
    # one manager example per turn named in evidence ("D1:1; D2:1" names two); the adversarial question is left out
    assert [(m.dia_id, [q.question for q in m.questions]) for m in managers] == [
        ("D1:1", ["What are the names of Andrew's dogs?"]),
        ("D1:2", ["When did Audrey go hiking?"]),
        ("D2:1", ["What are the names of Andrew's dogs?"]),
    ]
    first, _, third = managers
    assert first.related == [] and first.bank == []  # nothing was in the bank before the first turn
    assert {m.text for m in third.related} == {
        "Andrew: I adopted a dog named Buddy.",
        "Audrey: Lovely! I went hiking yesterday.",
    }
    assert {m.id for m in third.related} <= {m.id for m in third.bank}
    assert third.at == datetime(2023, 6, 2, 10, 0) and third.session == "session_2" and third.speaker == "Andrew"
    assert third.text.endswith("[shares a photo: a photo of a puppy]")
    assert [(a.question, a.answer, a.category, len(a.memories)) for a in answers] == [
        ("What are the names of Andrew's dogs?", "Buddy and Scout", 1, 4),
        ("When did Audrey go hiking?", "7 May 2023", 2, 4),
    ]
    assert answers[0].asked_on == datetime(2023, 6, 2, 10, 0)


def test_prompts_are_memr1s_own(tmp_path, tiny_embedder):
    with Memory(tmp_path / "bank.db", embedder=data.CachedEmbedder(tiny_embedder)) as mem:
        managers, answers = data.build_conversation(locomo_sample(), mem, verbatim=True, progress=False)
    third, answer = managers[2], answers[0]
    related = [(m.id, m.text, m.at) for m in third.related]
    assert third.messages() == prompts.manager_messages(
        third.text, speaker="Andrew", at=third.at, session="session_2", memories=prompts.shown_memories(related)
    )
    memories = prompts.shown_memories([(m.id, m.text, m.at) for m in answer.memories])
    assert answer.messages() == prompts.answer_messages(answer.question, memories=memories, now=answer.asked_on)
    assert answer.messages()[0]["content"] == prompts.ANSWER_SYSTEM
    assert [m.id for m in data.shown(answer.memories)] == [0, 1, 2, 3]  # small ids, as Memory shows them


def test_banks_are_built_by_the_manager(tmp_path, tiny_embedder):
    # a manager that keeps each turn upper-cased: the banks the examples see must hold its words, not the turns'
    def upper(messages):  # a fact names someone, or the parser drops it
        turn = turn_of(messages)
        return {"facts": [{"event": "ADD", "fact": f"{turn['speaker']} said {turn['text'].upper()}"}]}

    manager = ScriptedLLM(upper)
    with Memory(tmp_path / "bank.db", embedder=data.CachedEmbedder(tiny_embedder), manager=manager) as mem:
        managers, answers = data.build_conversation(locomo_sample(), mem, sources="memories", progress=False)
    assert len(manager.calls) == 4
    # as stored: the parser writes out the date "yesterday" meant
    assert {m.text for m in managers[2].related} == {
        "Andrew said I ADOPTED A DOG NAMED BUDDY.",
        "Audrey said LOVELY! I WENT HIKING YESTERDAY (7 May 2023).",
    }
    assert "Audrey said CONGRATULATIONS!" in {m.text for m in answers[0].memories}
    assert {m.kind for m in answers[0].memories} == {"memory"} and answers[0].sources == "memories"


@pytest.mark.parametrize("sources", [None, "memories", "turns", "both"])
def test_answer_examples_show_what_ask_shows(tmp_path, tiny_embedder, sources):
    """The Answer Agent trains on the prompt Memory.ask(distill=True) sends (training teaches the paper's distilling
    agent), for ask's default sources (raw turns) and each other."""

    def upper(messages):
        turn = turn_of(messages)
        return {"facts": [{"event": "ADD", "fact": f"{turn['speaker']} said {turn['text'].upper()}"}]}

    answerer = ScriptedLLM(lambda messages: {"selected": [0], "answer": "Buddy"})
    kwargs = {} if sources is None else {"sources": sources}
    with Memory(
        tmp_path / "bank.db", embedder=data.CachedEmbedder(tiny_embedder), manager=ScriptedLLM(upper), answerer=answerer
    ) as mem:
        _, answers = data.build_conversation(locomo_sample(), mem, k=3, progress=False, **kwargs)
        for example in answers:
            mem.ask(example.question, k=3, now=example.asked_on, distill=True, **kwargs)
    assert [a.k for a in answers] == [3, 3] and all(len(a.memories) == 3 for a in answers)
    assert [a.messages() for a in answers] == answerer.calls
    expected = {None: {"turn"}, "turns": {"turn"}, "memories": {"memory"}, "both": {"memory", "turn"}}[sources]
    assert {m.kind for a in answers for m in a.memories} == expected
    assert answers[0].sources == (sources or "turns")


def test_answer_examples_cut_to_k(tmp_path, tiny_embedder):
    with Memory(tmp_path / "bank.db", embedder=data.CachedEmbedder(tiny_embedder)) as mem:
        _, answers = data.build_conversation(locomo_sample(), mem, k=3, verbatim=True, progress=False)
    first = answers[0]
    assert first.at_k(2).memories == first.memories[:2] and first.at_k(2).k == 2
    with pytest.raises(ValueError, match="retrieved with k=3, fewer than k=4"):
        first.at_k(4)  # three were asked for and three came: a fourth may exist
    short = first.model_copy(update={"memories": first.memories[:2]})
    assert short.at_k(4).memories == short.memories  # fewer than asked for came: the bank holds no more


def test_build_writes_each_split_and_loads_it_back(tmp_path, tiny_embedder):
    counts = data.build(
        [locomo_sample("conv-26"), locomo_sample("conv-30"), locomo_sample("conv-41")],
        tmp_path,
        manager=None,
        embedder=tiny_embedder,
        progress=False,
    )
    assert counts == {"train": {"answer": 2, "manager": 3}, "val": {"answer": 2, "manager": 3}}  # conv-41 is test
    assert sorted(p.name for p in (tmp_path / "banks").iterdir() if p.suffix == ".db") == ["conv-26.db", "conv-30.db"]
    loaded = data.load(tmp_path, "val", "manager")
    assert [type(e) for e in loaded] == [data.ManagerExample] * 3 and loaded[0].conversation == "conv-30"
    assert data.load(tmp_path, "train", "answer")[1].answer == "7 May 2023"


def test_questions_that_retrieve_nothing_give_no_answer_example(tmp_path, tiny_embedder):
    manager = ScriptedLLM(lambda messages: {"facts": []})  # a manager that never stores anything
    with Memory(tmp_path / "bank.db", embedder=data.CachedEmbedder(tiny_embedder), manager=manager) as mem:
        managers, answers = data.build_conversation(locomo_sample(), mem, sources="memories", progress=False)
        assert len(data.build_conversation(locomo_sample("conv-30"), mem, progress=False)[1]) == 2  # turns were kept
    assert answers == []  # Memory.ask answers these without calling the model: nothing to train
    assert len(managers) == 3 and all(m.bank == [] for m in managers)


def test_to_dataset_carries_prompt_and_example(tmp_path, tiny_embedder):
    pytest.importorskip("datasets")
    with Memory(tmp_path / "bank.db", embedder=data.CachedEmbedder(tiny_embedder)) as mem:
        managers, _ = data.build_conversation(locomo_sample(), mem, verbatim=True, progress=False)
    rows = data.to_dataset(managers)
    assert rows.column_names == ["prompt", "example"]
    assert rows[2]["prompt"] == managers[2].messages()
    assert data.ManagerExample.model_validate_json(rows[2]["example"]) == managers[2]


@needs_locomo
@pytest.mark.slow
def test_real_locomo_first_session(tmp_path, tiny_embedder):
    """The real file's evidence quirks ("D8:6; D9:17", ids that don't exist) go through; splits are the paper's."""
    counts = data.build(
        datasets.load_locomo(LOCOMO), tmp_path, manager=None, embedder=tiny_embedder, max_sessions=1, progress=False
    )
    assert set(counts) == {"train", "val"} and all(n > 0 for c in counts.values() for n in c.values())
    for split, conversation in (("train", "conv-26"), ("val", "conv-30")):
        managers = data.load(tmp_path, split, "manager")
        assert {m.conversation for m in managers} == {conversation}
        assert all(m.dia_id.startswith("D1:") and m.session == "session_1" for m in managers)
        assert all(len(a.memories) <= 60 for a in data.load(tmp_path, split, "answer"))
