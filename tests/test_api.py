"""The core Python API: add, search, update, history, delete, delete_all, list, get."""

from __future__ import annotations

import pytest

from memr1 import Hit, InvalidInput, Memory, MemoryItem, MemoryNotFound


def test_walkthrough_from_the_readme(mem: Memory) -> None:
    item = mem.add(
        "Andrew adopted a dog named Buddy.", user="andrew", at="2023-05-08T13:56:00", metadata={"source": "chat"}
    )
    assert isinstance(item, MemoryItem) and item.id >= 1 and item.metadata == {"source": "chat"}
    assert item.at is not None and item.at.year == 2023
    mem.add("Caroline likes painting sunsets.", user="caroline")

    hits = mem.search("What pets does Andrew have?", k=10, user="andrew")
    assert hits and isinstance(hits[0], Hit) and hits[0].memory == item
    assert hits[0].text_score is not None and hits[0].vector_score is not None
    assert all(h.memory.user == "andrew" for h in hits)

    updated = mem.update(item.id, "Andrew has two dogs, Buddy and Scout.")
    assert updated.text == "Andrew has two dogs, Buddy and Scout." and updated.created_at == item.created_at
    assert updated.updated_at >= item.updated_at
    assert mem.search("Scout", user="andrew")[0].memory.id == item.id

    mem.delete(item.id)
    with pytest.raises(MemoryNotFound):
        mem.get(item.id)
    kinds = [(h.kind, h.before, h.after) for h in mem.history(item.id)]
    assert kinds == [
        ("ADD", None, "Andrew adopted a dog named Buddy."),
        ("UPDATE", "Andrew adopted a dog named Buddy.", "Andrew has two dogs, Buddy and Scout."),
        ("DELETE", "Andrew has two dogs, Buddy and Scout.", None),
    ]
    assert mem.search("Buddy", user="andrew") == []


def test_delete_all_touches_only_that_user(mem: Memory) -> None:
    for i in range(5):
        mem.add(f"a fact {i} about alice", user="a")
        mem.add(f"b fact {i} about bob", user="b")
    before_b = mem.list(user="b")
    assert mem.delete_all(user="a") == 5
    assert mem.list(user="a") == []
    assert mem.list(user="b") == before_b
    assert len(mem.search("fact about bob", k=20, user="b")) == 5
    assert mem.search("fact", user="a") == []


def test_search_is_scoped_to_the_user(mem: Memory) -> None:
    mem.add("the secret code is 1234", user="alice")
    mem.add("bob likes tea", user="bob")
    assert [h.memory.user for h in mem.search("secret code", user="bob")] == ["bob"]
    assert {h.memory.user for h in mem.search("secret code", user=None)} == {"alice", "bob"}


def test_since_and_until_filter_on_the_time_said(mem: Memory) -> None:
    old = mem.add("went hiking in the alps", at="2022-01-01")
    new = mem.add("went hiking in the andes", at="2023-06-01")
    assert [h.memory.id for h in mem.search("hiking", since="2023-01-01")] == [new.id]
    assert [h.memory.id for h in mem.search("hiking", until="2022-12-31")] == [old.id]


def test_metadata_filters_bind_values_and_allow_list_keys(mem: Memory) -> None:
    a = mem.add("note from chat", metadata={"source": "chat"})
    mem.add("note from email", metadata={"source": "email"})
    assert [h.memory.id for h in mem.search("note", filters={"source": "chat"})] == [a.id]
    assert [i.id for i in mem.list(filters={"source": "chat"})] == [a.id]
    assert mem.search("note", filters={"source": "chat' OR 1=1 --"}) == []
    for key in ['source") OR 1=1 --', "a b", "$.x", ""]:
        with pytest.raises(InvalidInput):
            mem.search("note", filters={key: "chat"})
        with pytest.raises(InvalidInput):
            mem.add("x", metadata={key: 1})


@pytest.mark.parametrize("text", ["", "   ", None, 42, b"bytes", "nul\x00byte", "x" * 70_000])
def test_bad_text_is_refused_and_nothing_is_written(mem: Memory, text: object) -> None:
    with pytest.raises(InvalidInput):
        mem.add(text)  # type: ignore[arg-type]
    assert mem.stats()["history"] == 0


def test_unknown_ids_and_bad_ids(mem: Memory) -> None:
    item = mem.add("something", user="a")
    with pytest.raises(MemoryNotFound):
        mem.update(999, "nope")
    with pytest.raises(MemoryNotFound):
        mem.delete(999)
    with pytest.raises(MemoryNotFound):
        mem.history(999)
    with pytest.raises(MemoryNotFound):  # another user's id behaves as unknown
        mem.update(item.id, "hijack", user="b")
    for bad in (0, -1, "1", 1.0, True):
        with pytest.raises(InvalidInput):
            mem.get(bad)  # type: ignore[arg-type]
    assert mem.get(item.id).text == "something"
    assert len(mem.history(item.id)) == 1


@pytest.mark.parametrize("at", ["yesterday", "2023-13-45", 12345, "8 May"])
def test_bad_dates_are_refused(mem: Memory, at: object) -> None:
    with pytest.raises(InvalidInput):
        mem.add("a fact", at=at)  # type: ignore[arg-type]


def test_locomo_dates_are_understood(mem: Memory) -> None:
    item = mem.add("a fact", at="1:56 pm on 8 May, 2023")
    assert item.at is not None and (item.at.year, item.at.month, item.at.day, item.at.hour) == (2023, 5, 8, 13)


def test_search_rejects_bad_arguments(mem: Memory) -> None:
    mem.add("anything")
    for kwargs in ({"k": 0}, {"k": "3"}, {"mode": "magic"}, {"since": "not a date"}):
        with pytest.raises(InvalidInput):
            mem.search("anything", **kwargs)  # type: ignore[arg-type]


def test_memory_ids_are_never_reused(mem: Memory) -> None:
    first = mem.add("first")
    mem.delete(first.id)
    second = mem.add("second")
    assert second.id != first.id
    assert [h.kind for h in mem.history(first.id)] == ["ADD", "DELETE"]


def test_threads_can_share_one_memory(mem: Memory) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(i: int) -> int:
        item = mem.add(f"thread fact {i}", user=f"u{i % 3}")
        mem.update(item.id, f"thread fact {i} updated")
        mem.search(f"thread fact {i}", user=f"u{i % 3}")
        return item.id

    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(work, range(24)))
    assert len(set(ids)) == 24
    assert len(mem.list(user=None)) == 24
    assert all(len(mem.history(i)) == 2 for i in ids)
