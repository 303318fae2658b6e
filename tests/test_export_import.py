"""JSONL export and all-or-nothing import."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memr1 import InvalidInput, Memory


def _comparable(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:  # ids are re-allocated by an import; everything else must survive
        row.pop("id", None), row.pop("memory_id", None), row.pop("turn_id", None)
        if "source_turns" in row:
            row["source_turns"] = len(row["source_turns"])
    return rows


def test_export_import_round_trips(mem: Memory, tmp_path: Path, tiny_embedder: Path) -> None:
    a = mem.add("Andrew adopted Buddy.", user="andrew", at="2023-05-08T13:56:00", metadata={"source": "chat", "n": 1})
    mem.update(a.id, "Andrew has Buddy and Scout.", metadata={"edited": True})
    gone = mem.add("temporary", user="andrew")
    mem.delete(gone.id)
    mem.add("Caroline paints. Ünïcödé ✓ 🐕", user="caroline")
    out = tmp_path / "bank.jsonl"
    assert mem.export(out) == 2
    with Memory(tmp_path / "other.db", embedder=tiny_embedder) as other:
        assert other.import_jsonl(out) == 2
        again = tmp_path / "again.jsonl"
        other.export(again)
        assert _comparable(again) == _comparable(out)
        assert [h.kind for h in other.history(other.list(user="andrew")[0].id)] == ["ADD", "UPDATE"]
        assert other.search("Buddy Scout", user="andrew")[0].memory.metadata == {
            "source": "chat",
            "n": 1,
            "edited": True,
        }


def test_export_of_one_user(mem: Memory, tmp_path: Path) -> None:
    mem.add("mine", user="a")
    mem.add("theirs", user="b")
    out = tmp_path / "a.jsonl"
    assert mem.export(out, user="a") == 1
    assert "theirs" not in out.read_text()


@pytest.mark.parametrize(
    "bad_line",
    [
        "{not json",
        '["a list"]',
        '{"type": "memory", "id": 9}',
        '{"type": "mystery"}',
        '{"type": "memory", "id": 9, "text": "", "user": "u", "created_at": "2023-01-01T00:00:00", "updated_at": "2023-01-01T00:00:00"}',
        '{"type": "memory", "id": 9, "text": "x", "user": "u", "created_at": "yesterday", "updated_at": "2023-01-01T00:00:00"}',
        '{"type": "memory", "id": 9, "text": "x", "user": "u", "created_at": "2023-01-01T00:00:00", "updated_at": "2023-01-01T00:00:00", "metadata": {"bad key": 1}}',
    ],
)
def test_a_broken_line_rejects_the_whole_import(mem: Memory, tmp_path: Path, bad_line: str) -> None:
    mem.add("one", user="a")
    mem.add("two", user="a")
    good = tmp_path / "good.jsonl"
    mem.export(good)
    lines = good.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:2] + [bad_line] + lines[2:]) + "\n")
    before = mem.stats()
    with pytest.raises(InvalidInput, match="line 3"):
        mem.import_jsonl(broken)
    assert mem.stats() == before


def test_import_of_a_missing_or_binary_file(mem: Memory, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        mem.import_jsonl(tmp_path / "absent.jsonl")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InvalidInput):
        mem.import_jsonl(binary)
