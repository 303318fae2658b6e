"""Property tests: random sequences of writes keep memories, history, vectors and FTS consistent."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memr1 import Memory

texts = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=60
).filter(lambda t: t.strip() != "")
users = st.sampled_from(["a", "b", "ünï"])
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), texts, users),
        st.tuples(st.just("update"), texts, st.integers(0, 50)),
        st.tuples(st.just("delete"), st.just(""), st.integers(0, 50)),
    ),
    max_size=25,
)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _replay(mem: Memory) -> dict[int, tuple[str, str]]:
    """Rebuild the current memories from the history table alone."""
    state: dict[int, tuple[str, str]] = {}
    for mid, user, kind, after in mem.store.query("SELECT memory_id, user_id, kind, after FROM history ORDER BY id"):
        if kind == "DELETE":
            state.pop(mid)
        else:
            state[mid] = (user, after)
    return state


@SETTINGS
@given(ops=ops)
def test_history_replays_to_the_current_state(tmp_path_factory, tiny_embedder: Path, ops) -> None:
    path = tmp_path_factory.mktemp("p") / "bank.db"
    with Memory(path, embedder=tiny_embedder) as mem:
        live: list[int] = []
        for kind, text, arg in ops:
            if kind == "add":
                live.append(mem.add(text, user=arg).id)
            elif live and kind == "update":
                mem.update(live[arg % len(live)], text)
            elif live and kind == "delete":
                mem.delete(live.pop(arg % len(live)))
        current = {i.id: (i.user, i.text) for i in mem.list(user=None)}
        assert current == _replay(mem)
        assert sorted(current) == sorted(live)
        vec_ids = [r[0] for r in mem.store.query("SELECT memory_id FROM vec_memories ORDER BY memory_id")]
        assert vec_ids == sorted(live)
        assert mem.store.query("INSERT INTO fts_memories(fts_memories) VALUES ('integrity-check')") == []
        for mid in live:  # every live memory is findable by its own text within its user
            user, text = current[mid]
            assert mid in [h.memory.id for h in mem.search(text, k=50, user=user, mode="vector")]


@SETTINGS
@given(
    items=st.lists(
        st.tuples(
            texts,
            users,
            st.dictionaries(
                st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True),
                st.one_of(st.integers(-(2**63), 2**63 - 1), texts, st.booleans()),
                max_size=3,
            ),
        ),
        max_size=12,
    )
)
def test_export_import_round_trips_exactly(tmp_path_factory, tiny_embedder: Path, items) -> None:
    d = tmp_path_factory.mktemp("rt")
    with Memory(d / "a.db", embedder=tiny_embedder) as a, Memory(d / "b.db", embedder=tiny_embedder) as b:
        for text, user, metadata in items:
            a.add(text, user=user, metadata=metadata, at="2023-05-08T13:56:00")
        a.export(d / "a.jsonl")
        b.import_jsonl(d / "a.jsonl")
        strip = lambda m: m.model_dump(exclude={"id"})  # noqa: E731
        assert [strip(m) for m in b.list(user=None)] == [strip(m) for m in a.list(user=None)]
