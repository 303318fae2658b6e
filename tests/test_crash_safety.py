"""Crash safety: writers killed with SIGKILL mid-observe, mid-ingest and mid-import leave a whole bank."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from benchmarks import soak_crash

from memr1 import Memory

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")


def test_random_kills_never_leave_half_a_write(tmp_path: Path, tiny_embedder: Path) -> None:
    out = soak_crash.run(
        trials=20, max_delay=1.0, embedder=str(tiny_embedder), workdir=tmp_path, seed=1, fresh_every=10
    )
    assert out["failures"] == []
    assert sum(out["killed"].values()) >= 18 and set(out["killed"]) == set(soak_crash.MODES)
    assert sum(out["committed_before_kill"].values()) >= 6  # the kills landed in the middle of real work


def test_the_audit_sees_every_kind_of_disagreement(mem: Memory) -> None:
    """The checks the crash tests rely on are not vacuous: each breakage below is reported."""
    a, b, c, d = (mem.add(t, user="u") for t in ("alpha fox", "beta dog", "gamma cat", "delta cow"))
    assert mem.check() == []
    conn = mem.store.conn
    conn.execute("DELETE FROM vec_memories WHERE memory_id = ?", (a.id,))  # a memory without its vector
    conn.execute(
        "INSERT INTO vec_memories (memory_id, embedding) VALUES (?, ?)", (999, mem.embedder.embed(["x"])[0].tobytes())
    )  # a vector without its memory
    conn.execute("UPDATE memories SET text = 'edited behind the history' WHERE id = ?", (b.id,))
    conn.execute("INSERT INTO fts_memories(fts_memories, rowid, text) VALUES ('delete', ?, 'gamma cat')", (c.id,))
    conn.execute("DELETE FROM history WHERE memory_id = ?", (d.id,))
    problems = "\n".join(mem.check())
    assert f"memory {a.id} has no vector" in problems and "vector 999 has no memory" in problems
    assert f"memory {b.id} is" in problems and f"memory {d.id} is" in problems
    assert "FTS index disagrees" in problems
