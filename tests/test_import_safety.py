"""Import: concatenated exports stay apart, re-imports are idempotent, hostile files are refused, all or nothing."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

from memr1 import Conflict, InvalidInput, Memory
from memr1.store import Store
from memr1.testing import ScriptedLLM

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /dev/zero are POSIX")


def _export_of(tmp_path: Path, tiny_embedder: Path, user: str) -> Path:
    """A bank of one user, two memories, the first updated, each decided from an observed turn: its export."""
    facts = iter([f"{user} adopted a dog", f"{user} paints on Sundays"])
    manager = ScriptedLLM(lambda messages: {"facts": [{"event": "ADD", "fact": next(facts)}]})
    with Memory(tmp_path / f"{user}.db", embedder=tiny_embedder, manager=manager) as mem:
        mem.observe(f"I am {user} and I adopted a dog", user=user, speaker=user)
        mem.observe("I paint on Sundays", user=user, speaker=user)
        first = mem.list(user=user)[0]
        mem.update(first.id, f"{user} has two dogs")
        out = tmp_path / f"{user}.jsonl"
        assert mem.export(out) == 2
    return out


def _concatenate(target: Path, *parts: Path) -> Path:
    target.write_bytes(b"".join(p.read_bytes() for p in parts))
    return target


def _assert_whole(mem: Memory) -> None:
    """Every memory's history is its own user's and replays to its text; every cited turn is its user's."""
    assert mem.check() == []
    for item in mem.list(user=None):
        history = mem.history(item.id)
        assert {h.user for h in history} == {item.user}
        assert history[-1].after == item.text
        turns = mem.store.get_turns(item.source_turns)
        assert len(turns) == len(item.source_turns) and {t.user for t in turns.values()} <= {item.user}


def test_concatenated_exports_keep_each_banks_ids_apart(tmp_path: Path, tiny_embedder: Path) -> None:
    """`cat a.jsonl b.jsonl`: both banks number from 1; each header starts a new numbering."""
    both = _concatenate(
        tmp_path / "all.jsonl", _export_of(tmp_path, tiny_embedder, "alice"), _export_of(tmp_path, tiny_embedder, "bob")
    )
    with Memory(tmp_path / "c.db", embedder=tiny_embedder) as mem:
        assert mem.import_jsonl(both) == 4
        _assert_whole(mem)
        assert [h.kind for h in mem.history(mem.list(user="alice")[0].id)] == ["ADD", "UPDATE"]
        assert [h.kind for h in mem.history(mem.list(user="bob")[0].id)] == ["ADD", "UPDATE"]
        assert [i.text for i in mem.list(user="bob")] == ["bob has two dogs", "bob paints on Sundays"]
        assert mem.stats()["turns"] == 4


def test_a_repeated_id_without_a_header_between_is_refused_with_its_line(tmp_path: Path, tiny_embedder: Path) -> None:
    alice, bob = _export_of(tmp_path, tiny_embedder, "alice"), _export_of(tmp_path, tiny_embedder, "bob")
    headerless_bob = bob.read_text().split("\n", 1)[1]
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(alice.read_text() + headerless_bob)
    first_repeat = len(alice.read_text().splitlines()) + 1  # bob's first turn reuses alice's turn id
    with Memory(tmp_path / "c.db", embedder=tiny_embedder) as mem:
        with pytest.raises(InvalidInput, match=rf"line {first_repeat}: turn id \d+ appears twice"):
            mem.import_jsonl(mixed)
        assert mem.stats()["memories"] == mem.stats()["turns"] == 0


def test_history_that_belongs_elsewhere_is_refused(mem: Memory, tmp_path: Path) -> None:
    mem.add("mine", user="a")
    out = tmp_path / "e.jsonl"
    mem.export(out)
    lines = out.read_text().splitlines()
    for bad, why in [
        (lines[-1].replace('"user": "a"', '"user": "b"'), "history row for user 'b'"),  # another tenant's row
        (lines[-1].replace('"memory_id": 1', '"memory_id": 7'), "no memory 7"),  # a memory the export lacks
        (lines[-1].replace('"after": "mine"', '"after": "yours"'), "does not replay"),
    ]:
        assert bad != lines[-1]
        out.write_text("\n".join([*lines[:-1], bad]) + "\n")
        with pytest.raises(InvalidInput, match=why):
            mem.import_jsonl(out)
    assert mem.stats()["memories"] == 1 and mem.check() == []


def test_importing_the_same_file_twice_imports_it_once(tmp_path: Path, tiny_embedder: Path) -> None:
    alice = _export_of(tmp_path, tiny_embedder, "alice")
    with Memory(tmp_path / "c.db", embedder=tiny_embedder) as mem:
        assert mem.import_jsonl(alice) == 2
        before = mem.stats()
        assert mem.import_jsonl(alice) == 0
        assert mem.import_jsonl(_concatenate(tmp_path / "twice.jsonl", alice, alice)) == 0
        assert mem.stats() == before
        _assert_whole(mem)
    with Memory(tmp_path / "d.db", embedder=tiny_embedder) as mem:
        assert mem.import_jsonl(tmp_path / "twice.jsonl") == 2  # one file holding the same export twice
        assert mem.stats()["memories"] == 2 and mem.stats()["turns"] == 2


def test_an_import_into_the_bank_it_came_from_adds_only_what_is_missing(mem: Memory, tmp_path: Path) -> None:
    kept = mem.add("kept", user="u")
    gone = mem.add("gone", user="u")
    out = tmp_path / "e.jsonl"
    mem.export(out)
    assert mem.import_jsonl(out) == 0
    mem.delete(gone.id)
    assert mem.import_jsonl(out) == 1  # restoring from a backup brings back what was lost, once
    assert [i.text for i in mem.list(user="u")] == ["kept", "gone"] and mem.list(user="u")[0].id == kept.id
    assert mem.check() == []


def test_identical_memories_within_one_export_are_all_kept(mem: Memory, tmp_path: Path) -> None:
    """Two memories may share user, text and time in one bank; they are two memories, not a re-import."""
    for _ in range(2):
        mem.add("same", user="u", at="2023-05-08T13:56:00")
    out = tmp_path / "e.jsonl"
    mem.export(out)
    text = out.read_text()
    created = mem.list(user="u")[0].created_at.isoformat().replace("+00:00", "Z")
    out.write_text(text.replace(mem.list(user="u")[1].created_at.isoformat().replace("+00:00", "Z"), created))
    with Memory(mem.path.with_name("other.db"), embedder=mem.embedder) as other:
        assert other.import_jsonl(out) == 2
        assert other.import_jsonl(out) == 0
        assert other.check() == []


@posix_only
def test_a_fifo_is_refused_without_waiting_for_a_writer(mem: Memory, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            mem.import_jsonl(fifo)
            outcome.append(None)
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader so the test run can end
        with open(fifo, "w"):
            pass
        worker.join(10)
        pytest.fail("import_jsonl waited on a FIFO")
    assert isinstance(outcome[0], InvalidInput) and "not a regular file" in str(outcome[0])


@posix_only
def test_a_device_and_a_directory_are_refused(mem: Memory, tmp_path: Path) -> None:
    for path in (Path("/dev/zero"), tmp_path):
        with pytest.raises(InvalidInput, match="not a regular file"):
            mem.import_jsonl(path)
    assert mem.stats()["memories"] == 0


def test_an_oversized_line_is_refused_without_reading_it_whole(mem: Memory, tmp_path: Path) -> None:
    mem.add("one", user="u")
    out = tmp_path / "e.jsonl"
    mem.export(out)
    header, *rest = out.read_text().splitlines()
    huge = tmp_path / "huge.jsonl"
    with huge.open("w") as f:
        f.write(header + "\n" + '{"type": "memory", "text": "' + "x" * (2 << 20) + '"}\n' + "\n".join(rest) + "\n")
    with pytest.raises(InvalidInput, match="line 2 is longer than 1 MiB"):
        mem.import_jsonl(huge)
    endless = tmp_path / "endless.jsonl"
    endless.write_bytes(b"\x20" * (3 << 20))  # no newline at all
    with pytest.raises(InvalidInput, match="line 1 is longer"):
        mem.import_jsonl(endless)
    assert mem.stats()["memories"] == 1


def test_the_longest_lines_an_export_writes_import_back(mem: Memory, tmp_path: Path) -> None:
    """A history row holds two texts at the length limit, with every character escaped in JSON."""
    from memr1.schema import MAX_TEXT_CHARS

    item = mem.add("\x01" * MAX_TEXT_CHARS, user="u")
    mem.update(item.id, "\x02" * MAX_TEXT_CHARS)
    out = tmp_path / "e.jsonl"
    mem.export(out)
    with Memory(tmp_path / "other.db", embedder=mem.embedder) as other:
        assert other.import_jsonl(out) == 1
        assert other.check() == []


def test_a_failure_midway_leaves_the_bank_unchanged(mem: Memory, tmp_path: Path, monkeypatch) -> None:
    mem.add("before", user="u")
    source = Memory(tmp_path / "src.db", embedder=mem.embedder)
    for i in range(5):
        source.add(f"fact {i}", user="v")
    source.export(tmp_path / "e.jsonl")
    source.close()
    before, calls = mem.stats(), []
    original = Store._history

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("disk trouble")
        return original(*args, **kwargs)

    monkeypatch.setattr(Store, "_history", staticmethod(failing))
    with pytest.raises(OSError):
        mem.import_jsonl(tmp_path / "e.jsonl")
    monkeypatch.undo()
    assert mem.stats() == before and mem.check() == []
    assert mem.import_jsonl(tmp_path / "e.jsonl") == 5


def test_a_memory_deleted_while_the_import_embeds_is_a_conflict(mem: Memory, tmp_path: Path, monkeypatch) -> None:
    """It was held when the import chose what to embed, so it has no vector: retry, nothing written."""
    item = mem.add("kept", user="u")
    out = tmp_path / "e.jsonl"
    mem.export(out)
    look = mem.store.held_memories

    def look_then_another_writer_deletes(users):
        held = look(users)
        mem.delete(item.id)
        return held

    monkeypatch.setattr(mem.store, "held_memories", look_then_another_writer_deletes)
    with pytest.raises(Conflict, match="retry"):
        mem.import_jsonl(out)
    monkeypatch.undo()
    assert mem.stats()["memories"] == 0 and mem.check() == []
    assert mem.import_jsonl(out) == 1
