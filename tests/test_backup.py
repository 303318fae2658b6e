"""Backups of an open bank, the files that make it up, and a bank deleted or replaced while it is open."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from memr1 import BankError, InvalidInput, Memory
from memr1.cli import cli

# Holds the bank open in another process, so that closing ours is not the last close (which SQLite
# checkpoints by itself). With "write", it also adds memories until stdin closes, printing each commit.
OTHER = """
import sys, time
from memr1 import Memory
bank, embedder, mode = sys.argv[1:4]
with Memory(bank, embedder=embedder) as mem:
    mem.list(user=None)
    print("open", flush=True)
    if mode == "write":
        import threading
        stop = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        i = 0
        while not stop.is_set():
            item = mem.add(f"written meanwhile {i}", user="writer")
            print(f"{item.id} {time.time()}", flush=True)
            i += 1
    else:
        sys.stdin.read()
"""


def other_process(bank: Path, embedder: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OTHER, str(bank), str(embedder), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "open"
    return proc


def finish(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    lines = proc.stdout.read().splitlines()
    assert proc.wait(timeout=120) == 0
    return lines


def texts(path: Path, embedder: Path) -> dict[int, str]:
    with Memory(path, embedder=embedder) as mem:
        assert mem.check() == []
        return {m.id: m.text for m in mem.list(user=None)}


def test_after_close_the_db_file_alone_holds_every_write(tmp_path: Path, tiny_embedder: Path) -> None:
    """Issue 12: with the bank open elsewhere, a copy of the .db held 0 of 30 memories; they were in the -wal."""
    bank = tmp_path / "bank.db"
    Memory(bank, embedder=tiny_embedder).close()
    other = other_process(bank, tiny_embedder, "hold")
    try:
        with Memory(bank, embedder=tiny_embedder) as mem:
            for i in range(30):
                mem.add(f"fact {i}")
        copy = tmp_path / "copy" / "bank.db"
        copy.parent.mkdir()
        shutil.copy(bank, copy)  # the .db alone, as a file backup tool would take it
    finally:
        finish(other)
    assert len(texts(copy, tiny_embedder)) == 30


def test_backup_while_another_process_writes(tmp_path: Path, tiny_embedder: Path) -> None:
    """The copy is one consistent snapshot: a valid bank with everything committed before the backup began."""
    bank, copy = tmp_path / "bank.db", tmp_path / "backup.db"
    with Memory(bank, embedder=tiny_embedder) as mem:
        for i in range(200):
            mem.add(f"an older fact, number {i}, " + "padding " * 40, user=f"u{i % 3}")
    writer = other_process(bank, tiny_embedder, "write")
    assert writer.stdout is not None
    first = [writer.stdout.readline() for _ in range(5)]  # the writer is well under way
    try:
        with Memory(bank, embedder=tiny_embedder) as mem:
            before = {m.id: m.text for m in mem.list(user=None)}
            started = time.time()
            assert mem.backup(copy) == copy
            ended = time.time()
            time.sleep(0.2)
    finally:
        commits = [float(line.split()[1]) for line in first + finish(writer)]
    assert min(commits) < started and max(commits) > ended  # it wrote before the backup and went on after
    backed_up = texts(copy, tiny_embedder)
    assert backed_up.items() >= before.items()
    final = texts(bank, tiny_embedder)
    assert backed_up == {i: t for i, t in final.items() if i <= max(backed_up)}  # a prefix: one moment's state
    assert len(final) > len(backed_up)
    assert not Path(f"{copy}-wal").exists() and not Path(f"{copy}-shm").exists()  # one self-contained file
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db", "bank.db"]  # no temporary file left


def test_backup_refuses_the_bank_itself_and_an_open_bank(mem: Memory, tmp_path: Path) -> None:
    mem.add("a fact")
    with pytest.raises(InvalidInput, match="onto itself"):
        mem.backup(mem.path)
    other = tmp_path / "other.db"
    Path(f"{other}-wal").write_bytes(b"")
    with pytest.raises(InvalidInput, match="open bank"):
        mem.backup(other)
    with pytest.raises(InvalidInput, match="directory"):
        mem.backup(tmp_path)
    assert not other.exists()


def test_backup_replaces_an_older_backup(mem: Memory, tmp_path: Path, tiny_embedder: Path) -> None:
    target = tmp_path / "nightly.db"
    mem.add("monday")
    mem.backup(target)
    mem.add("tuesday")
    mem.backup(target)
    assert sorted(texts(target, tiny_embedder).values()) == ["monday", "tuesday"]


def test_cli_backup(tmp_path: Path, tiny_embedder: Path) -> None:
    db, out = tmp_path / "cli.db", tmp_path / "out.db"
    with Memory(db, embedder=tiny_embedder) as mem:
        mem.add("Andrew adopted a dog named Buddy.", user="andrew")
    result = CliRunner().invoke(cli, ["backup", str(out), "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"backup": str(out), "db": str(db)}
    assert list(texts(out, tiny_embedder).values()) == ["Andrew adopted a dog named Buddy."]
    missing = CliRunner().invoke(cli, ["backup", str(out), "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 1 and "no bank at" in missing.output
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("deleted", [("",), ("", "-wal", "-shm")], ids=["db", "db-wal-shm"])
def test_writes_to_a_deleted_bank_are_refused(mem: Memory, tiny_embedder: Path, deleted: tuple[str, ...]) -> None:
    """Issue 12: after the bank was deleted, 5 add() calls succeeded, into a file nobody could read."""
    kept = mem.add("before the deletion")
    for suffix in deleted:
        Path(f"{mem.path}{suffix}").unlink()
    for i in range(5):
        with pytest.raises(BankError, match="deleted"):
            mem.add(f"after the deletion {i}")
    with pytest.raises(BankError, match="deleted"):
        mem.update(kept.id, "changed")
    with pytest.raises(BankError, match="deleted"):
        mem.delete(kept.id)
    with pytest.raises(BankError, match="deleted"):
        mem.forget("default")
    assert texts_elsewhere(mem.path, tiny_embedder) == []  # a new bank there, not the old one's -wal


def test_writes_to_a_replaced_bank_are_refused_and_the_new_file_survives(tmp_path: Path, tiny_embedder: Path) -> None:
    """Issue 12: a backup restored over a bank another process had open left the bank malformed."""
    bank, restored = tmp_path / "bank.db", tmp_path / "restored.db"
    with Memory(restored, embedder=tiny_embedder) as mem:
        for i in range(3):
            mem.add(f"restored {i}")
    mem = Memory(bank, embedder=tiny_embedder)
    try:
        for i in range(5):
            mem.add(f"written before the restore {i}")
        os.replace(restored, bank)
        with pytest.raises(BankError, match="replaced"):
            mem.add("written after the restore")
        # Another process opening the restored file now must not take the old file's -wal for its own.
        assert sorted(texts_elsewhere(bank, tiny_embedder)) == ["restored 0", "restored 1", "restored 2"]
    finally:
        mem.close()
    assert sorted(texts(bank, tiny_embedder).values()) == ["restored 0", "restored 1", "restored 2"]


def texts_elsewhere(path: Path, embedder: Path) -> list[str]:
    """What another process reads (two connections in one process share POSIX locks and would not be honest)."""
    script = (
        "import json, sys; from memr1 import Memory\n"
        "with Memory(sys.argv[1], embedder=sys.argv[2]) as m:\n"
        "    assert m.check() == [], m.check()\n"
        "    print(json.dumps([i.text for i in m.list(user=None)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(embedder)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_check_follows_the_bank_through_a_change_of_directory(
    tmp_path: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Memory("relative.db", embedder=tiny_embedder) as mem:
        mem.add("here")
        (tmp_path / "elsewhere").mkdir()
        monkeypatch.chdir(tmp_path / "elsewhere")
        mem.add("still the same file")
        assert len(mem.list()) == 2
