"""`Memory.apply`: the public write of a Memory Manager's decision, shared by observe and finetune's reward."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from memr1 import Conflict, InvalidInput, Memory, Turn
from memr1.prompts import ManagerPlan, PlannedOp

MAY_8 = datetime(2023, 5, 8, 13, 56, tzinfo=timezone.utc)


def turns(mem: Memory) -> int:
    return mem.stats()["turns"]


def test_a_plan_and_its_turn_are_written_together_at_the_turns_time(mem: Memory) -> None:
    buddy = mem.add("Andrew adopted a dog named Buddy.", at="2023-01-02")
    plan = ManagerPlan(
        [
            PlannedOp("UPDATE", buddy.id, "Andrew has two dogs, Buddy and Scout."),
            PlannedOp("ADD", None, "Andrew runs."),
        ],
        noops=[buddy.id],
    )
    turn = Turn(text="I adopted another dog, Scout! And I run now.", speaker="Andrew", at=MAY_8)
    ops = mem.apply(plan, turn, shown=[buddy])
    assert [(op.kind, op.previous) for op in ops] == [
        ("UPDATE", "Andrew adopted a dog named Buddy."),
        ("ADD", None),
        ("NOOP", None),
    ]
    updated = mem.get(buddy.id)
    assert updated.text == "Andrew has two dogs, Buddy and Scout." and updated.at == MAY_8  # as observe dates it
    assert mem.get(ops[1].memory_id).at == MAY_8
    assert turns(mem) == 1 and [h.kind for h in mem.history(buddy.id)] == ["ADD", "UPDATE"]


def test_a_plan_decided_on_a_memory_changed_since_writes_nothing(mem: Memory) -> None:
    buddy = mem.add("Andrew adopted a dog named Buddy.")
    mem.update(buddy.id, "Andrew adopted a dog named Buddy in March.")  # another writer, after the decision
    plan = ManagerPlan([PlannedOp("DELETE", buddy.id, ""), PlannedOp("ADD", None, "Andrew gave Buddy away.")])
    with pytest.raises(Conflict):
        mem.apply(plan, Turn(text="I gave Buddy away.", speaker="Andrew"), shown=[buddy])
    assert turns(mem) == 0 and len(mem.list()) == 1


def test_a_plan_may_change_only_what_it_was_decided_on(mem: Memory) -> None:
    buddy = mem.add("Andrew adopted a dog named Buddy.")
    other = mem.add("Gina opened a dance studio.", user="gina")
    turn = Turn(text="I gave Buddy away.", speaker="Andrew")
    with pytest.raises(InvalidInput, match="not decided on"):
        mem.apply(ManagerPlan([PlannedOp("DELETE", buddy.id, "")]), turn)
    with pytest.raises(InvalidInput, match="not 'default'"):
        mem.apply(ManagerPlan([PlannedOp("DELETE", other.id, "")]), turn, shown=[other])
    assert turns(mem) == 0 and len(mem.list(user=None)) == 2


def test_a_decision_made_on_one_bank_applies_to_a_copy(bank: Path, tiny_embedder: Path, tmp_path: Path) -> None:
    """finetune's reward: the plan names the example's ids; remapped, it applies to a fresh bank."""
    plan = ManagerPlan([PlannedOp("UPDATE", 41, "Andrew has two dogs, Buddy and Scout.")], noops=[41])
    with Memory(tmp_path / "copy.db", embedder=tiny_embedder) as mem:
        buddy = mem.add("Andrew adopted a dog named Buddy.")
        ops = mem.apply(plan.remap({41: buddy.id}), Turn(text="Scout!", speaker="Andrew"), shown=[buddy])
        assert [(op.kind, op.memory_id) for op in ops] == [("UPDATE", buddy.id), ("NOOP", buddy.id)]
