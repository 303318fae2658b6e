"""Erasing a user leaves no copy of their texts in the bank's files; new bank files are private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from memr1 import Memory, MemoryNotFound
from memr1.testing import ScriptedLLM, prompt_data

SSN = "078-05-1120"
PIN = "80417"
ALICE = "alice-7b2"  # user ids can be personal data too (an e-mail address)
BOB_SECRET = "bob-kept-5550199"


def raw(bank: Path) -> bytes:
    """Every byte SQLite keeps for the bank: the .db and, when there is one, the -wal."""
    wal = Path(f"{bank}-wal")
    return bank.read_bytes() + (wal.read_bytes() if wal.exists() else b"")


def manager(messages: list[dict[str, str]]) -> dict[str, object]:
    """Keeps the turn's last sentence as a fact about its speaker."""
    turn = prompt_data(messages, "TURN")
    return {"facts": [{"event": "ADD", "fact": f"{turn['speaker']} said: {turn['text']}"}]}


def open_bank(bank: Path, embedder: Path) -> Memory:
    return Memory(bank, embedder=embedder, manager=ScriptedLLM(manager))


def fill(mem: Memory) -> dict[str, list]:
    """Alice's secrets in memories, updated and deleted memories (history), and raw turns; Bob's alongside."""
    for i in range(40):
        mem.add(f"{BOB_SECRET} likes tea, note {i}", user="bob")
    ssn = mem.add(f"my social security number is {SSN}", user=ALICE)
    pin = mem.add(f"my bank PIN is {PIN}", user=ALICE)
    mem.update(pin.id, "my bank PIN changed", user=ALICE)  # history keeps the PIN as `before`
    gone = mem.add(f"the PIN again: {PIN}", user=ALICE)
    mem.delete(gone.id, user=ALICE)  # ... and as the text of a deleted memory
    mem.observe(f"Remember my SSN, {SSN}, and my PIN {PIN}.", speaker="Alice", user=ALICE)
    mem.observe(f"And {BOB_SECRET} is mine.", speaker="Bob", user="bob")
    for i in range(40):
        mem.add(f"{BOB_SECRET} likes coffee, note {i}", user="bob")
    vectors = [
        r[0]
        for r in mem.store.query(
            "SELECT embedding FROM vec_memories WHERE memory_id IN (SELECT id FROM memories WHERE user_id = ?)",
            (ALICE,),
        )
    ]
    vectors += [
        r[0]
        for r in mem.store.query(
            "SELECT embedding FROM turn_vectors WHERE turn_id IN (SELECT id FROM turns WHERE user_id = ?)", (ALICE,)
        )
    ]
    return {"ids": [ssn.id, pin.id, gone.id], "vectors": vectors}


def test_before_erasure_the_file_holds_the_secrets(bank: Path, tiny_embedder: Path) -> None:
    """The test's own check: reading the raw bytes finds what is there."""
    with open_bank(bank, tiny_embedder) as mem:
        fill(mem)
        assert len(mem.list(user=ALICE)) == 3 and len(mem.list(user="bob")) == 81
        mem.store.query("PRAGMA wal_checkpoint(TRUNCATE)")
        assert SSN.encode() in raw(mem.path) and PIN.encode() in raw(mem.path) and ALICE.encode() in raw(mem.path)


@pytest.mark.parametrize("erase", ["forget", "delete_all(purge=True)"])
def test_forget_leaves_no_trace_of_the_user_in_the_files(bank: Path, tiny_embedder: Path, erase: str) -> None:
    """Issue 12: after delete_all, history() still returned Alice's SSN and PIN, and the file held each 5 times."""
    with open_bank(bank, tiny_embedder) as mem:
        alice = fill(mem)
        bob = {m.id: m for m in mem.list(user="bob")}
        bob_history = {mid: mem.history(mid) for mid in bob}
        bob_turns = [r for r in mem.store.export_rows("bob") if r["type"] == "turn"]
        erased = mem.forget(ALICE) if erase == "forget" else mem.delete_all(user=ALICE, purge=True)
        assert erased == 3
        for mid in alice["ids"]:
            with pytest.raises(MemoryNotFound):
                mem.history(mid, user=ALICE)
            with pytest.raises(MemoryNotFound):
                mem.history(mid)
        assert mem.list(user=ALICE) == [] and mem.search(f"social security {SSN} PIN {PIN}", user=ALICE) == []
        assert [r for r in mem.store.export_rows(ALICE)] == []
        # Bob keeps everything, findable by words and by vectors
        assert {m.id: m for m in mem.list(user="bob")} == bob
        assert {mid: mem.history(mid) for mid in bob} == bob_history
        assert [r for r in mem.store.export_rows("bob") if r["type"] == "turn"] == bob_turns
        assert len(mem.search("coffee", k=100, user="bob", mode="text")) == 40
        assert len(mem.search("tea", k=100, user="bob", mode="vector")) == 81
        assert mem.check() == []
        # forget checkpoints: the -wal kept the pages as they were before
        for secret in (SSN, PIN, ALICE):
            assert secret.encode() not in raw(bank), secret
        assert not [v for v in alice["vectors"] if v in raw(bank)]
        assert BOB_SECRET.encode() in raw(bank)
    for secret in (SSN, PIN, ALICE):
        assert secret.encode() not in raw(bank), secret


def test_other_connections_forget_too(bank: Path, tiny_embedder: Path) -> None:
    """Another Memory on the bank holds a copy of the vectors in memory; after an erasure it must not rank
    the erased memories (they would take places in its top k, then vanish from the results)."""
    with Memory(bank, embedder=tiny_embedder) as mem, Memory(bank, embedder=tiny_embedder) as other:
        for i in range(5):
            mem.add(f"{BOB_SECRET} likes tea, note {i}", user="bob")
            mem.add(f"my social security number is {SSN}, note {i}", user=ALICE)
        mem.add("the last word is Bob's", user="bob")  # so that the history's last row survives the erasure
        query = f"my social security number is {SSN}"
        assert len(other.search(query, k=5, user=None, mode="vector")) == 5
        mem.forget(ALICE)
        hits = other.search(query, k=5, user=None, mode="vector")
        assert [h.memory.user for h in hits] == ["bob"] * 5


def test_delete_all_without_purge_keeps_the_history(mem: Memory) -> None:
    """The audit trail stays unless erasure is asked for: delete_all says what it does."""
    item = mem.add(f"my PIN is {PIN}", user=ALICE)
    assert mem.delete_all(user=ALICE) == 1
    assert [h.kind for h in mem.history(item.id, user=ALICE)] == ["ADD", "DELETE"]


def test_new_bank_files_are_private(tmp_path: Path, tiny_embedder: Path) -> None:
    """Issue 12: new banks were created world-readable (0644), their -wal and -shm too."""
    old = os.umask(0o022)
    try:
        bank = tmp_path / "private.db"
        with Memory(bank, embedder=tiny_embedder) as mem:
            mem.add("a secret")
            files = [bank, Path(f"{bank}-wal"), Path(f"{bank}-shm")]
            assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
    finally:
        os.umask(old)


def test_an_existing_banks_mode_is_left_alone(tmp_path: Path, tiny_embedder: Path) -> None:
    bank = tmp_path / "shared.db"
    Memory(bank, embedder=tiny_embedder).close()
    bank.chmod(0o640)  # its owner chose to share it with a group
    with Memory(bank, embedder=tiny_embedder) as mem:
        mem.add("a fact")
    assert stat.S_IMODE(bank.stat().st_mode) == 0o640
