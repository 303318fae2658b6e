"""Concurrent writers: real processes and threads on one bank, bounded busy waits, stale decisions refused."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from benchmarks import soak_concurrency

from memr1 import BankBusy, Conflict, Memory
from memr1.memory import OBSERVE_ATTEMPTS
from memr1.store import SCHEMA_VERSION
from memr1.testing import ScriptedLLM


def test_many_processes_with_threads_lose_nothing(tmp_path: Path, tiny_embedder: Path) -> None:
    """8 processes x 2 threads: observe, add, update and delete on shared users, then the bank is audited."""
    out = soak_concurrency.run(
        procs=8, ops=24, threads=2, busy_timeout=60, embedder=str(tiny_embedder), workdir=tmp_path
    )
    assert out["failures"] == []
    assert out["overlap"] >= 4  # the processes really ran at the same time
    assert out["attempted"] >= 8 * 20 and out["succeeded"] >= 0.9 * out["attempted"]
    # the only refusals a caller may see, both saying nothing was written: the memory it named was deleted by
    # another writer meanwhile, or (observe) the memories it decided on kept changing through every retry
    assert set(out["errors"]) <= {"MemoryNotFound", "Conflict"}, out["errors"]
    assert out["errors"].get("Conflict", 0) <= 0.2 * out["latency_ms"]["observe"]["n"]
    assert {"observe", "add", "update", "delete"} <= set(out["latency_ms"])


def test_a_new_bank_opened_by_two_processes_at_once_migrates_once(tmp_path: Path, tiny_embedder: Path) -> None:
    bank = tmp_path / "race.db"
    script = "import sys; from memr1 import Memory\nwith Memory(sys.argv[1], embedder=sys.argv[2]) as m: m.add('x')"
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(bank), str(tiny_embedder)], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    with Memory(bank) as mem:
        assert len(mem.list()) == 3
        assert mem.store.query("SELECT count(*) FROM migrations")[0][0] == SCHEMA_VERSION  # each migration ran once


HOLD = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN " + sys.argv[2])
print("locked", flush=True)
sys.stdin.read()
"""


@contextmanager
def locked(path: Path, mode: str = "IMMEDIATE") -> Iterator[None]:
    """Another process holds the bank's write lock. (Not another connection in this process: two SQLite
    libraries in one process, such as sqlite3 and sqlean, cannot see each other's POSIX locks.)"""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)


def test_busy_waits_are_bounded_and_say_what_to_do(tmp_path: Path, tiny_embedder: Path) -> None:
    """Another writer holds the lock: writes wait busy_timeout, then BankBusy; reads go on (WAL)."""
    bank = tmp_path / "busy.db"
    llm = ScriptedLLM(lambda m: {"facts": [{"event": "ADD", "fact": "a fact"}]})
    with Memory(bank, embedder=tiny_embedder) as mem:
        kept = mem.add("kept", user="u")
        mem.export(tmp_path / "e.jsonl")
    with locked(bank):
        with Memory(bank, embedder=tiny_embedder, busy_timeout=0.3, manager=llm) as mem:
            before = mem.stats()
            writes = {
                "add": lambda: mem.add("x", user="u"),
                "update": lambda: mem.update(kept.id, "y"),
                "delete": lambda: mem.delete(kept.id),
                "delete_all": lambda: mem.delete_all(user="u"),
                "observe": lambda: mem.observe("I like tea", user="u"),
                "import_jsonl": lambda: mem.import_jsonl(tmp_path / "e.jsonl"),
            }
            for name, write in writes.items():
                start = time.perf_counter()
                with pytest.raises(BankBusy, match=r"busy_timeout=seconds") as caught:
                    write()
                waited = time.perf_counter() - start
                assert 0.25 <= waited < 3.0, (name, waited)
                assert "nothing was written" in str(caught.value) and "Retry" in str(caught.value)
            assert [h.memory.id for h in mem.search("kept", user="u")] == [kept.id]  # readers are not blocked
            assert mem.get(kept.id).text == "kept" and mem.history(kept.id)
            mem.export(tmp_path / "during.jsonl", user="u")
            assert mem.stats() == before
    other = tmp_path / "new.db"
    other.touch()
    with locked(other, "EXCLUSIVE"), pytest.raises(BankBusy):  # nor can a bank be created in a locked file
        Memory(other, embedder=tiny_embedder, busy_timeout=0.2)
    with Memory(bank, embedder=tiny_embedder, busy_timeout=0.3) as mem:  # the lock is gone: writes go through
        mem.add("after", user="u")
        assert mem.check() == []


def test_a_decision_on_memories_that_keep_changing_is_refused_whole(bank: Path, tiny_embedder: Path) -> None:
    """Each time the manager decides, another writer changes the memory it is about to update: after
    OBSERVE_ATTEMPTS decisions the turn is refused with Conflict, and none of it was written."""
    calls = {"n": 0}

    def manager(messages):
        calls["n"] += 1
        target = mem.list(user="u")[0]
        mem.update(target.id, f"changed meanwhile {calls['n']}", user="u")  # the lost update, had it applied
        return {
            "facts": [
                {"event": "ADD", "fact": "new fact"},
                {"event": "UPDATE", "id": 0, "fact": "stale rewrite of the fact, changed meanwhile"},
            ]
        }

    with Memory(bank, embedder=tiny_embedder, manager=ScriptedLLM(manager)) as mem:
        mem.add("the fact", user="u")
        turns = mem.stats()["turns"]
        with pytest.raises(Conflict, match="Retry the turn"):
            mem.observe("a turn with a new fact and a stale rewrite", user="u")
        assert calls["n"] == OBSERVE_ATTEMPTS
        assert [i.text for i in mem.list(user="u")] == [f"changed meanwhile {OBSERVE_ATTEMPTS}"]
        assert mem.stats()["turns"] == turns and mem.check() == []
        assert [h.actor for h in mem.history(mem.list(user="u")[0].id)] == ["api"] * (OBSERVE_ATTEMPTS + 1)
