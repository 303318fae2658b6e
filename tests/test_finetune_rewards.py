"""finetune.rewards on worked examples: each completion's reward, and why."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from finetune.data import AnswerExample, ManagerExample, Mem, Question
from finetune.rewards import AnswerReward, ManagerReward, completion_text

from memr1.llm import LlamaCpp
from memr1.testing import ScriptedLLM, prompt_data

BUDDY = Mem(id=7, text="Andrew adopted a dog named Buddy.", at=datetime(2023, 5, 8, 13, 56))
HIKING = Mem(id=9, text="Audrey likes hiking.", at=datetime(2023, 5, 8, 13, 56))


def answer_example() -> AnswerExample:
    return AnswerExample(
        conversation="conv-26",
        question="What is the name of Andrew's dog?",
        answer="Buddy",
        category=4,
        memories=[BUDDY, HIKING],
    )


def reply(selected: list[int], answer: str) -> str:
    return json.dumps({"selected": selected, "answer": answer})


@pytest.mark.parametrize(
    ("completion", "metric", "format_weight", "expected"),
    [
        (reply([0], "Buddy."), "em", 0.0, 1.0),  # punctuation and case go in normalisation
        (reply([0, 1], "buddy"), "em", 0.0, 1.0),  # selection does not change the reward
        (reply([0], "The dog Buddy"), "em", 0.0, 0.0),  # "dog buddy" is not "buddy"
        (reply([0], "The dog Buddy"), "f1", 0.0, 2 / 3),  # stemmed tokens: P 1/2, R 1
        (reply([0], "Scout"), "em", 0.1, 0.1),  # parseable but wrong: the format term alone
        (reply([0], "Buddy"), "em", 0.1, 1.0),  # right: 0.1 + 0.9 * 1
        ("Buddy", "em", 0.1, 0.0),  # not JSON: what memr1 would reject scores 0
        ('```json\n{"selected": [0], "answer": "Buddy"}\n```', "em", 0.0, 0.0),  # fences are not JSON either
        (reply([5], "Buddy"), "em", 0.0, 1.0),  # an id never shown is dropped, as in Memory.ask
        ('{"selected": [0], "answer": "Buddy", "why": "x"}', "em", 0.0, 0.0),  # extra keys break the schema
    ],
)
def test_answer_reward(completion, metric, format_weight, expected):
    reward = AnswerReward(metric, format_weight)
    assert reward.score(completion, answer_example()) == pytest.approx(expected)


def test_answer_reward_as_trl_calls_it():
    example = answer_example().model_dump_json()
    completions = [
        [{"role": "assistant", "content": reply([0], "Buddy")}],  # conversational prompts give messages
        reply([0], "Scout"),  # plain prompts give text
    ]
    rewards = AnswerReward()(
        prompts=[[], []],
        completions=completions,
        example=[example, example],
        completion_ids=[[1], [2]],
        trainer_state=None,
    )
    assert rewards == [1.0, 0.0]
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"


def test_answer_reward_rejects_bad_settings():
    with pytest.raises(ValueError):
        AnswerReward("bleu")
    with pytest.raises(ValueError):
        AnswerReward("em", 1.0)


# ---- the Memory Manager: ops on a copy of the bank, questions to a frozen answer agent ----


def manager_example() -> ManagerExample:
    return ManagerExample(
        conversation="conv-26",
        dia_id="D2:1",
        text="I adopted another dog, Scout!",
        speaker="Andrew",
        at=datetime(2023, 6, 2, 10, 0),
        session="session_2",
        asked_on=datetime(2023, 6, 2, 10, 0),
        related=[BUDDY],
        bank=[BUDDY, HIKING],
        questions=[Question(question="What are the names of Andrew's dogs?", answer="Buddy and Scout", category=4)],
    )


def dog_namer(messages):
    """A frozen answer agent that names every dog it is shown: its answer depends only on the bank. It answers as
    `ask` does by default, from everything shown (the CONTEXT of the direct-answer prompt)."""
    memories = prompt_data(messages, "CONTEXT")
    names = [name for name in ("Buddy", "Scout") if any(name in m["text"] for m in memories)]
    return {"answer": " and ".join(names) or "I don't know"}


def ops(*operations) -> str:
    return json.dumps(
        {"facts": [{"fact": t, "event": e, **({} if e == "ADD" else {"id": i})} for e, i, t in operations]}
    )


@pytest.mark.parametrize(
    ("completion", "answers", "em", "f1"),
    [
        (ops(("UPDATE", 0, "Andrew has two dogs, Buddy and Scout.")), ["Buddy and Scout"], 1.0, 1.0),
        (ops(("ADD", -1, "Andrew adopted a second dog, Scout.")), ["Buddy and Scout"], 1.0, 1.0),
        (ops(("NOOP", 0, "")), ["Buddy"], 0.0, 2 / 3),  # the bank misses Scout
        (ops(), ["Buddy"], 0.0, 2 / 3),
        (ops(("UPDATE", 3, "Andrew has two dogs, Buddy and Scout.")), ["Buddy"], 0.0, 2 / 3),  # id 3 was never shown
        # Buddy is gone, replaced by a fact that names no dog: only that and Audrey's hiking are left
        (ops(("DELETE", 0, "Andrew adopted another dog.")), ["I don't know"], 0.0, 0.0),
        ("Andrew has two dogs", None, 0.0, 0.0),  # not JSON: nothing is applied or asked
    ],
)
def test_manager_reward(tiny_embedder, completion, answers, em, f1):
    answerer = ScriptedLLM(dog_namer)
    reward = ManagerReward(answerer, tiny_embedder)
    predictions = reward.predict(completion, manager_example())
    assert predictions == answers
    assert len(answerer.calls) == (0 if answers is None else 1)
    assert reward.score(completion, manager_example()) == pytest.approx(em)
    assert ManagerReward(answerer, reward.embedder, "f1").score(completion, manager_example()) == pytest.approx(f1)


def test_manager_reward_starts_from_the_same_bank_each_time(tiny_embedder):
    reward = ManagerReward(ScriptedLLM(dog_namer), tiny_embedder)
    example = manager_example().model_dump_json()
    completions = [ops(("UPDATE", 0, "Andrew has two dogs, Buddy and Scout.")), ops(("NOOP", 0, "")), "nonsense"]
    rewards = reward(
        prompts=[[]] * 3,
        completions=[[{"role": "assistant", "content": c}] for c in completions],
        example=[example] * 3,
    )
    assert rewards == [1.0, 0.0, 0.0]  # the UPDATE did not leak into the NOOP's bank


def test_manager_reward_with_llama_cpp_answerer(tiny_embedder, tiny_chat):
    """The frozen agent can be any memr1 backend: here a real (random-weight) GGUF through llama.cpp."""
    reward = ManagerReward(LlamaCpp(tiny_chat, slot="frozen"), tiny_embedder)
    predictions = reward.predict(ops(("ADD", -1, "Andrew adopted a second dog, Scout.")), manager_example())
    assert predictions is not None and len(predictions) == 1 and predictions[0]
    assert 0.0 <= reward.score(ops(), manager_example()) <= 1.0
