"""Several real processes writing to one bank at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from memr1 import Memory

WORKER = """
import sys
from memr1 import Memory
path, model, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with Memory(path, embedder=model, busy_timeout=60) as mem:
    for i in range(n):
        item = mem.add(f"{name} fact {i}", user=name)
        if i % 3 == 0:
            mem.update(item.id, f"{name} fact {i} revised")
        if i % 5 == 0:
            mem.delete(item.id)
        mem.search(f"{name} fact", user=name)
print("ok")
"""


def test_two_processes_write_the_same_bank(bank: Path, tiny_embedder: Path) -> None:
    with Memory(bank, embedder=tiny_embedder):
        pass  # create the bank first so both workers only write rows
    n = 30
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(bank), str(tiny_embedder), name, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in ("alice", "bob")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip() == "ok", err
    with Memory(bank, embedder=tiny_embedder) as mem:
        assert mem.store.query("PRAGMA integrity_check")[0][0] == "ok"
        for name in ("alice", "bob"):
            items = mem.list(user=name)
            assert len(items) == n - len(range(0, n, 5))
            assert sum(i.text.endswith("revised") for i in items) == len([i for i in range(0, n, 3) if i % 5])
        kinds = dict(mem.store.query("SELECT kind, count(*) FROM history GROUP BY kind"))
        assert kinds == {"ADD": 2 * n, "UPDATE": 2 * len(range(0, n, 3)), "DELETE": 2 * len(range(0, n, 5))}


def test_a_new_bank_opened_by_two_processes_at_once_migrates_once(tmp_path: Path, tiny_embedder: Path) -> None:
    bank = tmp_path / "race.db"
    script = "import sys; from memr1 import Memory\nwith Memory(sys.argv[1], embedder=sys.argv[2]) as m: m.add('x')"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(bank), str(tiny_embedder)], stderr=subprocess.PIPE)
             for _ in range(3)]  # fmt: skip
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read() if p.stderr else ""
    with Memory(bank) as mem:
        assert len(mem.list()) == 3
        assert mem.store.query("SELECT count(*) FROM migrations")[0][0] == 1
