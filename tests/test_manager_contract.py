"""The Memory Manager's output contract: a grammar built per call, and a parser that settles what a small
model gets wrong (the speaker's name, relative dates, duplicates, facts already held, lossy updates)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest

from memr1 import InvalidInput, Memory, prompts
from memr1.store import _MIGRATIONS, _statements
from memr1.testing import ScriptedLLM, prompt_data

AT = datetime(2023, 5, 8, 13, 56)  # a Monday
BUDDY = prompts.shown_memories([(41, "Andrew adopted a dog named Buddy.", AT)])


def plan(facts: list[dict], shown=(), ids=(), turn: str = "I adopted a dog named Buddy.") -> prompts.ManagerPlan:
    return prompts.parse_manager({"facts": facts}, list(shown), list(ids), turn=turn, speaker="Andrew", at=AT)


def test_the_grammar_offers_only_what_was_shown() -> None:
    empty = prompts.manager_schema([])
    assert empty["properties"]["facts"]["items"]["properties"]["event"] == {"const": "ADD"}
    assert "id" not in empty["properties"]["facts"]["items"]["properties"]
    two = prompts.manager_schema([0, 1])
    change = two["properties"]["facts"]["items"]["anyOf"][1]
    assert change["properties"]["id"] == {"enum": [0, 1]}
    assert change["properties"]["event"] == {"enum": ["UPDATE", "DELETE", "NOOP"]}
    assert prompts.answer_schema(3)["properties"]["selected"]["items"] == {"enum": [0, 1, 2]}


def test_llama_cpp_compiles_the_per_call_grammars(tiny_chat: Path) -> None:
    from memr1.llm import LlamaCpp

    llm = LlamaCpp(tiny_chat, retries=0, max_tokens=8)
    for schema in (prompts.manager_schema([]), prompts.manager_schema(list(range(10))), prompts.answer_schema(60)):
        assert llm._grammar(schema) is not None


def test_the_speaker_is_named_and_relative_dates_are_written_out() -> None:
    out = plan(
        [{"fact": "I went to a support group yesterday.", "event": "ADD"}],
        turn="I went to a support group yesterday, it was so powerful.",
    )
    assert [op.text for op in out.ops] == ["Andrew went to a support group yesterday (7 May 2023)."]
    cases = {
        "I'm flying to Tokyo tomorrow": "Andrew is flying to Tokyo tomorrow (9 May 2023)",
        "My sister visited last week": "Andrew's sister visited last week (the week before 8 May 2023)",
        "Andrew started pottery two years ago": "Andrew started pottery two years ago (2021)",
        "Last Friday Andrew went camping": "Last Friday (5 May 2023) Andrew went camping",
        "Andrew moves next month": "Andrew moves next month (June 2023)",
        "Andrew ran 3 days ago": "Andrew ran 3 days ago (around 5 May 2023)",
        "Andrew ran yesterday (7 May 2023)": "Andrew ran yesterday (7 May 2023)",  # already resolved
    }
    for said, stored in cases.items():
        assert prompts.written_fact(said, speaker="Andrew", at=AT) == stored
    assert prompts.written_fact("I ran yesterday", speaker=None, at=None) == "I ran yesterday"


def test_a_fact_is_one_sentence_of_the_turn() -> None:
    looping = "Andrew adopted a dog named Buddy. I'm glad to see you. I'm glad to see you."
    assert [op.text for op in plan([{"fact": looping, "event": "ADD"}]).ops] == ["Andrew adopted a dog named Buddy."]
    made_up = plan([{"fact": "Andrew greeted Caroline warmly.", "event": "ADD"}], turn="Hey, how are you?")
    assert made_up.ops == [] and "shares no word with the turn" in made_up.dropped[0]


def test_a_memory_restated_on_an_unrelated_turn_is_held_not_refused() -> None:
    """Qwen2.5-Coder-1.5B on LoCoMo conv-30 restated the memories it was shown on turn after turn; those are
    facts already held (NOOP, nothing written), so `dropped` counts only output that was refused."""
    jon = prompts.shown_memories([(9, "Jon lost his job as a banker (yesterday, 19 January 2023).", AT)])
    out = plan(
        [
            {"fact": "Jon lost his job as a banker.", "event": "ADD"},
            {"fact": "Gina greeted Jon warmly.", "event": "ADD"},
        ],
        jon,
        [9],
        "Wow, the studio looks amazing!",
    )
    assert out.ops == [] and out.noops == [9]
    assert len(out.dropped) == 1 and "shares no word with the turn" in out.dropped[0]


def test_duplicates_collapse_and_a_fact_already_held_is_a_noop() -> None:
    twice = plan([{"fact": "Andrew adopted a dog named Buddy.", "event": "ADD"}] * 2)
    assert [op.kind for op in twice.ops] == ["ADD"] and twice.noops == [None]
    held = plan(
        [
            {"fact": "Andrew adopted a dog named Buddy!", "event": "ADD"},
            {"fact": "Andrew adopted Buddy.", "event": "UPDATE", "id": 0},
        ],
        BUDDY,
        [41],
    )
    assert held.ops == [] and held.noops == [41, 41] and held.dropped == []


def test_an_update_never_loses_a_name_the_memory_held() -> None:
    turn = "I adopted another dog, Scout!"
    merged = plan([{"fact": "Andrew adopted another dog, Scout!", "event": "UPDATE", "id": 0}], BUDDY, [41], turn)
    assert [(op.kind, op.memory_id, op.text) for op in merged.ops] == [
        ("UPDATE", 41, "Andrew adopted a dog named Buddy. Andrew adopted another dog, Scout!")
    ]
    kept = plan(
        [{"fact": "Andrew adopted a dog named Buddy, and Scout.", "event": "UPDATE", "id": 0}], BUDDY, [41], turn
    )
    assert [op.text for op in kept.ops] == ["Andrew adopted a dog named Buddy, and Scout."]
    banker = prompts.shown_memories([(5, "Jon lost his job as a banker.", AT)])
    lossy = prompts.parse_manager(
        {"facts": [{"fact": "Jon lost his job at Door Dash.", "event": "UPDATE", "id": 0}]},
        banker,
        [5],
        turn="I lost my job at Door Dash.",
        speaker="Gina",
        at=AT,
    )
    assert [op.text for op in lossy.ops] == ["Jon lost his job as a banker. Jon lost his job at Door Dash."]


def test_delete_stores_the_fact_that_replaced_the_memory_and_ids_must_have_been_shown() -> None:
    vegetarian = prompts.shown_memories([(7, "Andrew is vegetarian.", AT)])
    turn = "I started eating meat again."
    out = plan(
        [
            {"fact": "Andrew is no longer vegetarian, he eats meat.", "event": "DELETE", "id": 0},
            {"fact": "Andrew stopped being vegetarian and eats meat.", "event": "UPDATE", "id": 0},
            {"fact": "Andrew eats meat.", "event": "DELETE", "id": 5},
        ],
        vegetarian,
        [7],
        turn,
    )
    assert [(op.kind, op.memory_id, op.text) for op in out.ops] == [
        ("DELETE", 7, ""),
        ("ADD", None, "Andrew is no longer vegetarian, he eats meat."),
        ("ADD", None, "Andrew stopped being vegetarian and eats meat."),
    ]  # a second change to one memory becomes an ADD
    assert out.dropped == ["DELETE names id 5, which was not shown"]


def test_no_noop_names_a_memory_the_same_plan_deletes() -> None:
    """Seen with SmolLM2 in `memr1 demo`: DELETE #1 (Buddy) and ADD Scout, then two NOOPs naming #1."""
    buddy = prompts.shown_memories([(1, "Andrew adopted a dog named Buddy.", AT)])
    out = plan(
        [
            {"fact": "Andrew adopted another dog named Scout.", "event": "DELETE", "id": 0},
            {"fact": "Andrew adopted a dog named Buddy.", "event": "NOOP", "id": 0},
        ],
        buddy,
        [1],
        "I adopted another dog, Scout!",
    )
    assert [(op.kind, op.memory_id) for op in out.ops] == [("DELETE", 1), ("ADD", None)]
    assert out.noops == []


def test_a_change_to_an_unrelated_memory_is_an_add() -> None:
    """Measured on Qwen2.5-Coder-1.5B (LoCoMo conv-30): it deleted "Jon lost his job" to store "Gina lost hers"."""
    met = prompts.shown_memories([(3, "Gina met Jon on Friday.", AT)])
    turn = "I'm starting a dance studio, I love dancing."
    out = prompts.parse_manager(
        {
            "facts": [
                {"fact": "Jon is starting a dance studio.", "event": "DELETE", "id": 0},
                {"fact": "Jon loves dancing.", "event": "UPDATE", "id": 0},
            ]
        },
        met,
        [3],
        turn=turn,
        speaker="Jon",
        at=AT,
    )
    assert [(op.kind, op.memory_id) for op in out.ops] == [("ADD", None), ("ADD", None)]


def test_the_old_contract_is_refused() -> None:
    with pytest.raises(prompts.OutputRejected):
        prompts.parse_manager({"operations": []}, [], [])


# ---- ask(sources=...): raw turns reach the Answer Agent ----


@pytest.fixture
def talk(bank: Path, tiny_embedder: Path):
    manager = ScriptedLLM(lambda messages: {"facts": []})  # a manager that stores nothing, as models did
    with Memory(bank, embedder=tiny_embedder, manager=manager) as mem:
        mem.observe("I went to a support group yesterday.", speaker="Caroline", at=AT, user="c")
        mem.observe("Nice! I painted a sunrise.", speaker="Melanie", at=AT, user="c")
        mem.observe("I have a secret.", speaker="Bob", at=AT, user="other")
        yield mem


def test_turns_reach_the_answer_agent_when_the_manager_stored_nothing(talk: Memory) -> None:
    assert talk.list(user="c") == []
    assert talk.ask("When did Caroline go to the support group?", user="c", sources="memories").llm_calls == 0
    seen = []

    def answer(messages):
        seen.append(prompt_data(messages, "MEMORIES"))
        return {"selected": [m["id"] for m in seen[-1] if "support" in m["text"]], "answer": "7 May 2023"}

    talk._answerer = ScriptedLLM(answer)
    out = talk.ask("When did Caroline go to the support group?", user="c", sources="turns", distill=True)
    texts = [m["text"] for m in seen[0]]
    assert "Caroline: I went to a support group yesterday (7 May 2023)." in texts
    assert all("secret" not in t for t in texts)  # another user's turns never show
    assert out.text == "7 May 2023" and out.selected == []
    assert [t.text for t in out.selected_turns] == ["I went to a support group yesterday."]
    assert out.selected_turns[0].speaker == "Caroline" and out.retrieved == 2


def test_an_answer_copied_from_a_turn_loses_the_speaker_label(talk: Memory) -> None:
    # Small models answer "Caroline: I went to ..." by copying the line they were shown; F1 pays for the label.
    talk._answerer = ScriptedLLM(lambda m: {"selected": [0], "answer": "Caroline: a support group"})
    assert talk.ask("Where did Caroline go?", user="c", sources="turns", distill=True).text == "a support group"
    talk._answerer = ScriptedLLM(lambda m: {"selected": [0], "answer": "Note: 10:30"})  # not a speaker shown
    assert talk.ask("Where did Caroline go?", user="c", sources="turns", distill=True).text == "Note: 10:30"
    shown = [prompts.Shown(0, "Jon: I opened a studio")]
    assert prompts.parse_direct_answer({"answer": "Jon: a studio"}, shown, [5]) == ("a studio", [5])


def test_both_sources_interleave_memories_and_turns(talk: Memory) -> None:
    talk.add("Melanie paints sunrises.", user="c")
    seen = []
    talk._answerer = ScriptedLLM(
        lambda m: seen.append(prompt_data(m, "MEMORIES")) or {"selected": [0, 1], "answer": "x"}
    )
    out = talk.ask("What does Melanie paint?", user="c", sources="both", k=3, distill=True)
    assert [m["text"] for m in seen[0]][0] == "Melanie paints sunrises." and len(seen[0]) == 3
    assert [m.text for m in out.selected] == ["Melanie paints sunrises."] and len(out.selected_turns) == 1
    with pytest.raises(InvalidInput, match="sources"):
        talk.ask("What?", user="c", sources="everything")  # type: ignore[arg-type]


def test_turns_of_a_bank_from_before_are_searchable_after_the_upgrade(bank: Path, tiny_embedder: Path) -> None:
    """A bank written by schema 1 has turns without an FTS index or vectors: migration 2 indexes their words."""
    with sqlite3.connect(bank) as conn:
        conn.execute(
            "CREATE TABLE migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        for statement in _statements(_MIGRATIONS[0][2]):
            conn.execute(statement)
        conn.execute("INSERT INTO migrations VALUES (1, 'initial schema', '2026-01-01')")
        conn.execute(
            "INSERT INTO turns (user_id, speaker, text, created_at) VALUES "
            "('c', 'Caroline', 'I adopted a parrot named Kiwi.', '2026-01-01')"
        )
    seen = []
    answerer = ScriptedLLM(lambda m: seen.append(prompt_data(m, "MEMORIES")) or {"selected": [0], "answer": "Kiwi"})
    with Memory(bank, embedder=tiny_embedder, answerer=answerer) as mem:
        out = mem.ask("What is the parrot called?", user="c", sources="turns", distill=True)
        assert [m["text"] for m in seen[0]] == ["Caroline: I adopted a parrot named Kiwi."] and out.text == "Kiwi"
        assert mem.check() == []
    with sqlite3.connect(bank) as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM migrations ORDER BY version")] == [1, 2, 3]


def test_erasing_a_users_turns_erases_their_vectors_and_words(talk: Memory) -> None:
    talk.delete_all(user="c")
    assert talk.store.query("SELECT count(*) FROM turn_vectors")[0][0] == 1  # Bob's
    assert talk.store.query("SELECT count(*) FROM fts_turns WHERE fts_turns MATCH 'support'")[0][0] == 0
    assert talk.ask("When did Caroline go to the support group?", user="c", sources="turns").llm_calls == 0
    assert json.dumps(talk.check()) == "[]"
