"""Tenant isolation: random interleavings of every call by several users; none ever reads or touches another's data.

Every text carries its owner's name, so a leak shows up wherever it lands: in a result, in an export, or in the
prompt an agent was sent.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from memr1 import InvalidInput, Memory, MemoryNotFound
from memr1.testing import ScriptedLLM, prompt_data

USERS = ["alice", "bob", "carol"]
users = st.sampled_from(USERS)


def shown(messages) -> list[dict]:
    content = messages[-1]["content"]
    label = "MEMORIES"
    return json.loads(content.split(f"<<<{label}\n", 1)[1].split(f"\n{label}>>>", 1)[0])


class Tenants(RuleBasedStateMachine):
    embedder: Path

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="tenants-"))
        self.leaks: list[str] = []  # what an agent was shown that its caller does not own
        self.asker = ""
        self.mem = Memory(
            self.dir / "bank.db",
            embedder=self.embedder,
            manager=ScriptedLLM(self._manage),
            answerer=ScriptedLLM(self._answer),
        )
        self.n = 0

    def teardown(self) -> None:
        self.mem.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- the scripted agents: they act on whatever they are shown, and report what that was ----

    def _manage(self, messages) -> dict:
        turn = prompt_data(messages, "TURN")
        owner = turn["speaker"]
        memories = shown(messages)
        self.leaks += [m["text"] for m in memories if not m["text"].startswith(f"{owner}:")]
        ops = [{"event": "ADD", "fact": f"{owner}: observed {turn['text']}"}]
        if memories:  # try to change what was shown, and an id that was not (three facts at most a turn)
            ops.append({"event": "UPDATE", "id": memories[0]["id"], "fact": f"{owner}: revised {self._next()}"})
        ops.append({"event": "DELETE", "id": len(memories), "fact": f"{owner}: observed"})
        return {"facts": ops}

    def _answer(self, messages) -> dict:
        memories = shown(messages)
        self.leaks += [m["text"] for m in memories if not m["text"].startswith(f"{self.asker}:")]
        return {"selected": [m["id"] for m in memories] + [len(memories), 1000], "answer": "an answer"}

    def _next(self) -> int:
        self.n += 1
        return self.n

    # ---- what each user owns, read straight from the tables ----

    def owned(self, user: str) -> tuple:
        q = self.mem.store.query
        return (
            q("SELECT id, text, metadata, updated_at FROM memories WHERE user_id = ? ORDER BY id", (user,)),
            q("SELECT id, memory_id, kind, before, after FROM history WHERE user_id = ? ORDER BY id", (user,)),
            q("SELECT id, text FROM turns WHERE user_id = ? ORDER BY id", (user,)),
            q(
                "SELECT v.memory_id FROM vec_memories v JOIN memories m ON m.id = v.memory_id WHERE m.user_id = ?",
                (user,),
            ),
        )

    def others(self, user: str) -> dict[str, tuple]:
        return {u: self.owned(u) for u in USERS if u != user}

    def ids_of(self, user: str) -> list[int]:
        return [r[0] for r in self.mem.store.query("SELECT id FROM memories WHERE user_id = ?", (user,))]

    # ---- rules ----

    @rule(user=users, topic=st.sampled_from(["tea", "dogs", "hiking", "the secret code"]))
    def add(self, user: str, topic: str) -> None:
        before = self.others(user)
        item = self.mem.add(f"{user}: likes {topic} {self._next()}", user=user, metadata={"owner": user})
        assert item.user == user and self.others(user) == before

    @rule(user=users, owner=users, pick=st.integers(0, 5), delete=st.booleans())
    def change_someone(self, user: str, owner: str, pick: int, delete: bool) -> None:
        """update/delete naming a memory id: only the caller's own memories can be reached."""
        ids = self.ids_of(owner)
        if not ids:
            return
        mid = ids[pick % len(ids)]
        before = self.others(user)
        if owner != user:
            with pytest.raises(MemoryNotFound):
                if delete:
                    self.mem.delete(mid, user=user)
                else:
                    self.mem.update(mid, f"{user}: hijack", user=user)
            with pytest.raises(MemoryNotFound):
                self.mem.get(mid, user=user)
            with pytest.raises(MemoryNotFound):
                self.mem.history(mid, user=user)
            assert self.others(user) == before and self.mem.get(mid).user == owner
        elif delete:
            self.mem.delete(mid, user=user)
        else:
            assert self.mem.update(mid, f"{user}: updated {self._next()}", user=user).user == user
        assert self.others(user) == before

    @rule(user=users)
    def delete_all(self, user: str) -> None:
        before = self.others(user)
        self.mem.delete_all(user=user)
        assert self.owned(user)[0] == [] and self.owned(user)[2] == []
        assert self.others(user) == before

    @rule(user=users, topic=st.sampled_from(["tea", "dogs", "alice", "bob", "carol", "secret"]))
    def observe(self, user: str, topic: str) -> None:
        before = self.others(user)
        ops = self.mem.observe(f"I talk about {topic}", speaker=user, user=user)
        assert all(self.mem.get(o.memory_id, user=user) for o in ops if o.kind != "DELETE")
        assert self.others(user) == before

    @rule(user=users, topic=st.sampled_from(["tea", "dogs", "alice", "bob", "carol", "secret", "likes"]))
    def read(self, user: str, topic: str) -> None:
        before = {u: self.owned(u) for u in USERS}
        for mode in ("hybrid", "vector", "text"):
            assert {h.memory.user for h in self.mem.search(f"{topic} likes", k=50, user=user, mode=mode)} <= {user}
        assert {h.memory.user for h in self.mem.search(topic, user=user, filters={"owner": user})} <= {user}
        assert self.mem.search(topic, user=user, filters={"owner": next(u for u in USERS if u != user)}) == []
        assert [i.user for i in self.mem.list(user=user)] == [user] * len(self.ids_of(user))
        for mid in self.ids_of(user):
            assert {e.user for e in self.mem.history(mid, user=user)} == {user}
        self.asker = user
        answer = self.mem.ask(f"What about {topic}?", user=user, distill=True)
        assert all(m.user == user for m in answer.selected)
        assert {u: self.owned(u) for u in USERS} == before  # reads write nothing

    @rule(user=users)
    def export(self, user: str) -> None:
        out = self.dir / f"{user}.jsonl"
        self.mem.export(out, user=user)
        rows = [json.loads(line) for line in out.read_text().splitlines()[1:]]
        assert {r["user"] for r in rows} <= {user}
        assert all(r["text"].startswith(f"{user}:") for r in rows if r["type"] == "memory")

    @invariant()
    def nothing_leaked_and_the_bank_agrees(self) -> None:
        assert self.leaks == []
        for user in USERS:
            assert all(text.startswith(f"{user}:") for _, text, *_ in self.owned(user)[0])


def test_random_interleavings_of_users_never_cross(tiny_embedder: Path) -> None:
    Tenants.embedder = tiny_embedder
    run_state_machine_as_test(
        Tenants,
        settings=settings(
            max_examples=50, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )


def test_delete_all_for_one_user_leaves_everyone_else(mem: Memory) -> None:
    """mem0 #3928: delete_all for one user wiped every user."""
    for user in USERS:
        for i in range(3):
            mem.add(f"{user}: fact {i}", user=user)
    before = {u: mem.list(user=u) for u in USERS}
    assert mem.delete_all(user="alice") == 3
    assert mem.list(user="alice") == [] and {u: mem.list(user=u) for u in ("bob", "carol")} == {
        u: before[u] for u in ("bob", "carol")
    }
    with pytest.raises(InvalidInput, match="user"):
        mem.delete_all(user=None)  # type: ignore[arg-type]
    assert len(mem.list(user=None)) == 6 and mem.check() == []
