"""Names mem0 users expect (issue 13): get_all, reset, search(top_k=...)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memr1 import InvalidInput, Memory, MemoryNotFound
from memr1.prompts import UNKNOWN_ANSWER
from memr1.testing import ScriptedLLM, prompt_data


def manager(messages: list[dict[str, str]]) -> dict[str, object]:
    turn = prompt_data(messages, "TURN")
    return {"facts": [{"event": "ADD", "fact": f"{turn['speaker']} said: {turn['text']}"}]}


def test_get_all_is_list(mem: Memory) -> None:
    for i in range(4):
        mem.add(f"alice fact {i}", user="alice", metadata={"n": i % 2})
        mem.add(f"bob fact {i}", user="bob")
    assert mem.get_all(user="alice") == mem.list(user="alice") and len(mem.get_all(user="alice")) == 4
    assert mem.get_all(user=None) == mem.list(user=None) and len(mem.get_all(user=None)) == 8
    assert mem.get_all(user="alice", limit=1, offset=1, filters={"n": 1}) == mem.list(
        user="alice", limit=1, offset=1, filters={"n": 1}
    )
    assert mem.get_all() == mem.list() == []  # the default user, as list
    with pytest.raises(InvalidInput):
        mem.get_all(user="alice", limit=-1)


def test_top_k_is_k(mem: Memory) -> None:
    for i in range(12):
        mem.add(f"a fact about hiking number {i}")
    assert len(mem.search("hiking")) == 10  # the default is unchanged
    assert mem.search("hiking", top_k=3) == mem.search("hiking", k=3) == mem.search("hiking", 3)
    assert len(mem.search("hiking", top_k=3)) == 3
    assert len(mem.search("hiking", 4, top_k=4)) == 4  # both, agreeing
    with pytest.raises(InvalidInput, match="top_k"):
        mem.search("hiking", k=2, top_k=3)
    for bad in (0, 1001, True, 2.5, "3"):
        with pytest.raises(InvalidInput):
            mem.search("hiking", top_k=bad)  # type: ignore[arg-type]


def test_reset_erases_every_user_and_keeps_the_bank(bank: Path, tiny_embedder: Path) -> None:
    with Memory(bank, embedder=tiny_embedder, manager=ScriptedLLM(manager)) as mem:
        items = [mem.add(f"{user} likes tea, note {i}", user=user) for user in ("alice", "bob") for i in range(3)]
        mem.update(items[0].id, "alice likes coffee now", user="alice")
        mem.delete(items[1].id, user="alice")
        mem.observe("I adopted a dog named Buddy.", speaker="Bob", user="bob")
        assert len(mem.list(user=None)) == 6
        meta = mem.store.meta()

        assert mem.reset() == 6
        assert mem.list(user=None) == [] and mem.get_all(user=None) == []
        assert list(mem.store.export_rows(None)) == []  # no memory, history or turn of anyone
        for item in items:
            with pytest.raises(MemoryNotFound):
                mem.history(item.id)
        for mode in ("hybrid", "vector", "text"):
            assert mem.search("tea dog Buddy", user=None, mode=mode) == []  # type: ignore[arg-type]
        assert mem.ask("What did Bob adopt?", user="bob").text == UNKNOWN_ANSWER
        assert mem.check() == []
        assert {k: v for k, v in mem.store.meta().items() if k != "erasures"} == {
            k: v for k, v in meta.items() if k != "erasures"
        }  # the embedder and schema stay

        again = mem.add("alice likes tea again", user="alice")
        assert again.id > max(i.id for i in items)  # ids are never reused
        assert [h.memory.id for h in mem.search("tea", user=None)] == [again.id]
        assert mem.reset() == 1 and mem.reset() == 0


def test_reset_reaches_other_connections(bank: Path, tiny_embedder: Path) -> None:
    """Another Memory holds in-memory copies of the vectors: after a reset it must not serve the erased rows."""
    asked: list[object] = []

    def answerer(messages: list[dict[str, str]]) -> dict[str, object]:
        asked.append(prompt_data(messages, "MEMORIES"))
        return {"selected": [0], "answer": "Scout"}

    with (
        Memory(bank, embedder=tiny_embedder, manager=ScriptedLLM(manager)) as mem,
        Memory(bank, embedder=tiny_embedder, answerer=ScriptedLLM(answerer)) as other,
    ):
        for i in range(5):
            mem.add(f"the old secret, note {i}", user="alice")
        mem.observe("My old dog is Buddy.", speaker="Bob", user="bob")
        assert len(other.search("the old secret", k=5, user=None, mode="vector")) == 5
        assert (
            other.ask("Which dog?", user="bob", sources="turns", distill=True).llm_calls == 1
        )  # its turn index is built

        mem.reset()
        # written before `other` looks again: its copies cannot tell the reset from the history's ids alone
        new = [mem.add(f"a new note {i}", user="alice") for i in range(3)]
        mem.observe("My new dog is Scout.", speaker="Bob", user="bob")
        hits = other.search("the old secret", k=5, user=None, mode="vector")
        assert {h.memory.id for h in hits} == {m.id for m in mem.list(user=None)} and len(hits) == 4
        assert {n.id for n in new} <= {h.memory.id for h in hits}
        ans = other.ask("Which dog?", user="bob", sources="turns", distill=True)
        assert [t.text for t in ans.selected_turns] == ["My new dog is Scout."]
        assert "Buddy" not in str(asked[-1])

        mem.reset()
        assert other.search("the old secret", k=5, user=None, mode="vector") == []
        assert other.ask("Which dog?", user="bob", sources="turns", distill=True).text == UNKNOWN_ANSWER


def test_observe_takes_chat_messages_as_mem0s_add_does(bank: Path, tiny_embedder: Path) -> None:
    """A list of {"role", "content"} messages: each is a turn (speaker: its name, else its role); the system
    prompt is no conversation and is skipped."""
    scripted = ScriptedLLM(manager)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "I adopted a dog named Buddy.", "name": "Andrew"},
        {"role": "assistant", "content": "Congratulations on Buddy!"},
    ]
    with Memory(bank, embedder=tiny_embedder, manager=scripted) as mem:
        ops = mem.observe(messages, user="andrew")
        assert [op.text for op in ops] == [
            "Andrew said: I adopted a dog named Buddy.",
            "assistant said: Congratulations on Buddy!",
        ]
        assert len(scripted.calls) == 2 and mem.stats()["turns"] == 2
        with pytest.raises(InvalidInput, match="role, content and name"):
            mem.observe({"role": "user", "content": "hi", "tool_calls": []})
        assert mem.stats()["turns"] == 2
