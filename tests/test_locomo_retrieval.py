"""memr1 bench locomo-retrieval: evidence parsing, the recall definition, the RRF baseline, the report, and
ensure_locomo."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from memr1 import Memory, datasets, retrieval
from memr1.bench_locomo_retrieval import (
    CachedEmbedder,
    PlainRRF,
    conversations,
    evidence_of,
    fuse,
    main,
    parse_dia_ids,
    recall,
    rrf_search,
)
from memr1.embedding import embed_texts

from .conftest import LOCOMO, needs_locomo


def test_parse_dia_ids_reads_the_malformed_ones() -> None:
    assert parse_dia_ids("D1:3") == (["D1:3"], 0, 0)
    assert parse_dia_ids("D8:6; D9:17") == (["D8:6", "D9:17"], 2, 0)
    assert parse_dia_ids("D:11:26") == (["D11:26"], 1, 0)
    assert parse_dia_ids("D30:05") == (["D30:5"], 1, 0)
    assert parse_dia_ids(["D", "D2:1"]) == (["D2:1"], 0, 1)
    assert parse_dia_ids("D26:14, D26:34") == (["D26:14", "D26:34"], 2, 0)  # observations cite like this too
    ids, count = evidence_of(["D1:1", "D:1:2", "D10:1", "D1:1"], {"D1:1", "D1:2"})
    assert ids == ["D1:1", "D1:2"] and (count.ids, count.repaired, count.unknown, count.no_evidence) == (4, 1, 1, 0)
    assert evidence_of(["D10:1"], {"D1:1"})[1].no_evidence == 1


def test_recall_is_the_share_of_evidence_in_the_top_k() -> None:
    hits = [["D1:2"], ["D1:9"], ["D1:1", "D1:5"]]  # the third memory cites two turns
    assert recall(["D1:1", "D1:2"], hits, 1) == 0.5
    assert recall(["D1:1", "D1:2"], hits, 2) == 0.5
    assert recall(["D1:1", "D1:2"], hits, 3) == 1.0
    assert recall(["D1:7"], hits, 3) == 0.0


# ---- the baseline: hybrid search as memr1 first shipped it ----


def test_fusion_rewards_agreement() -> None:
    scores = fuse([1, 2, 3], [3, 1, 4])
    assert max(scores, key=scores.__getitem__) == 1
    assert scores[3] > scores[2] and 4 in scores
    assert scores[1] == pytest.approx(1 / 61 + 1 / 62)  # k = 60, ranks counted from 1


def test_plain_rrf_is_the_first_hybrid_search(mem: Memory) -> None:
    for text in ["alpha beta", "beta gamma", "gamma delta", "delta alpha"]:
        mem.add(text)
    vector = mem.embedder.embed(["alpha gamma"])[0]
    index = mem.vector_index()
    hits = rrf_search(mem.store, index, vector, "alpha gamma", k=4, user="default")
    v = [m for m, _ in index.nearest(vector, 50, user="default")]
    t = [
        m
        for m, _ in mem.store.fts(
            retrieval.fts_query("alpha gamma"), limit=50, user="default", since=None, until=None, filters=None
        )
    ]
    want = fuse(v, t)
    assert [h.memory.id for h in hits] == sorted(want, key=lambda m: -want[m])
    assert [h.score for h in hits] == sorted(want.values(), reverse=True)
    assert [h.memory.id for h in rrf_search(mem.store, index, vector, "alpha gamma", k=2, user="default")] == [
        h.memory.id for h in hits[:2]
    ]
    assert rrf_search(mem.store, index, vector, "alpha gamma", k=4, user="nobody", baseline=PlainRRF(200)) == []


def _conversation(sample_id: str, turns: list[str], qa: list[dict]) -> dict:
    sessions = {}
    for n, part in enumerate((turns[: len(turns) // 2], turns[len(turns) // 2 :]), 1):
        sessions[f"session_{n}_date_time"] = f"1:56 pm on {n} May, 2023"
        sessions[f"session_{n}"] = [
            {"speaker": "Ann" if i % 2 else "Bob", "dia_id": f"D{n}:{i + 1}", "text": text}
            for i, text in enumerate(part)
        ]
    facts = {"Ann": [[f"Ann said: {turns[0]}", "D1:1"], [f"Ann recalled {turns[1]}", ["D1:1", "D1:2"]]]}
    return {
        "sample_id": sample_id,
        "conversation": {"speaker_a": "Bob", "speaker_b": "Ann", **sessions},
        "observation": {"session_1_observation": facts},
        "qa": qa,
    }


TURNS = [
    "I adopted a corgi named Pixel",
    "We hiked up Mount Tamalpais",
    "My sister plays the oboe",
    "The bakery sells sourdough croissants",
    "Our roof leaked during the thunderstorm",
    "I am learning Portuguese verbs",
]


@pytest.fixture
def tiny_locomo(tmp_path: Path) -> Path:
    """Three conversations (train, val, test) whose questions repeat their evidence's rare words."""
    qa = [
        {"question": "corgi named Pixel?", "answer": "x", "evidence": ["D1:1"], "category": 4},
        {"question": "Mount Tamalpais hiked?", "answer": "x", "evidence": ["D:1:2"], "category": 2},
        {
            "question": "sourdough croissants bakery, thunderstorm roof?",
            "answer": "x",
            "evidence": ["D2:1; D2:2", "D9:9"],
            "category": 1,
        },
        {"question": "Portuguese verbs?", "answer": "x", "evidence": [], "category": 3},
        {"question": "oboe?", "adversarial_answer": "x", "evidence": ["D1:3"], "category": 5},
    ]
    data = [_conversation(sid, TURNS, qa) for sid in ("conv-26", "conv-30", "conv-41")]
    path = tmp_path / "locomo.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    assert main([*args, "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_report_on_a_hand_checkable_bank(
    tiny_locomo: Path, tiny_embedder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--data",
        str(tiny_locomo),
        "--embedder",
        str(tiny_embedder),
        "--cache",
        str(tmp_path / "cache"),
        "--k",
        "1,2,6",
        "--out",
        str(tmp_path / "out"),
    ]
    report = _run(args, capsys)
    assert list(report["results"]) == ["train", "val", "train+val", "test", "all"]
    assert report["evidence"] == {
        "ids": 15,
        "repaired": 9,
        "unknown": 3,
        "unreadable": 0,
        "no_evidence": 3,
        "questions": 9,
        "reachable": 1.0,
    }
    for group in report["results"].values():
        assert list(group) == ["vector", "text", "hybrid-rrf", "hybrid", "turns"]
        for mode, block in group.items():
            r = block["recall"]
            assert 0.0 <= r["1"] <= r["2"] <= r["6"] == 1.0, (mode, r)  # k = every memory: all evidence found
            assert set(block["by_category"]) == {"multi-hop", "temporal", "single-hop"}
        # each question's words occur only in its evidence: BM25 ranks it first; the two-turn question has 1 of 2
        assert group["text"]["by_category"]["single-hop"]["recall"]["1"] == 1.0
        assert group["text"]["by_category"]["multi-hop"]["recall"] == {"1": 0.5, "2": 1.0, "6": 1.0}
        assert group["text"]["recall"]["1"] == pytest.approx((1 + 1 + 0.5) / 3, abs=1e-4)  # reports round to 4 places
    assert report["results"]["all"]["hybrid"]["questions"] == 9
    assert report["seconds"]["embedded_texts"] == 6 + 3  # the three conversations repeat the same texts
    assert "| hybrid |" in (tmp_path / "out" / "locomo_retrieval.md").read_text()
    assert json.loads((tmp_path / "out" / "locomo_retrieval.json").read_text())["results"] == report["results"]
    again = _run([*args, "--split", "test", "--ablation", "--k", "6"], capsys)
    assert again["seconds"]["embedded_texts"] == 0  # all cached
    assert list(again["results"]) == ["test"] and len(again["results"]["test"]) > 4
    assert all(block["recall"]["6"] == 1.0 for block in again["results"]["test"].values())


def test_observations_source_maps_facts_to_their_turns(
    tiny_locomo: Path, tiny_embedder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _run(
        [
            "--data",
            str(tiny_locomo),
            "--embedder",
            str(tiny_embedder),
            "--cache",
            str(tmp_path),
            "--source",
            "observations",
            "--conversations",
            "conv-41",
            "--k",
            "2",
        ],
        capsys,
    )
    # two facts cite D1:1 and D1:2; the other evidence is in no fact, so it can never be found
    assert report["evidence"]["reachable"] == pytest.approx(2 / 4)
    hybrid = report["results"]["test"]["hybrid"]["by_category"]
    assert hybrid["single-hop"]["recall"]["2"] == 1.0 and hybrid["temporal"]["recall"]["2"] == 1.0
    assert hybrid["multi-hop"]["recall"]["2"] == 0.0


@needs_locomo
def test_real_slice_with_the_tiny_embedder(
    tiny_embedder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = _run(
        [
            "--data",
            str(LOCOMO),
            "--embedder",
            str(tiny_embedder),
            "--cache",
            str(tmp_path),
            "--conversations",
            "conv-26",
            "--sessions",
            "2",
            "--max-questions",
            "6",
            "--k",
            "1,5,60",
        ],
        capsys,
    )
    assert report["config"]["conversations"] == ["conv-26"] and report["evidence"]["questions"] == 6
    modes = report["results"]["train"]
    for block in modes.values():
        assert 0.0 <= block["recall"]["1"] <= block["recall"]["5"] <= block["recall"]["60"] <= 1.0
    for mode in ("vector", "hybrid-rrf", "hybrid"):  # 35 turns in two sessions, all within the top 60
        assert modes[mode]["recall"]["60"] == 1.0


def _tune_turns(path: Path) -> list:
    """The train + val conversations as the recall ideas read them: raw turns, "Speaker: text"."""
    return conversations(
        datasets.load_locomo(path),
        split="tune",
        ids=None,
        source="turns",
        style="speaker",
        sessions=None,
        max_questions=None,
    )


def test_recall_ideas_start_from_what_ask_ranks(
    tiny_locomo: Path, tiny_embedder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks.locomo_recall_ideas: its default row is the harness's `turns` mode, and each idea re-ranks
    every turn (all evidence within the top 6 of 6 turns)."""
    from benchmarks import locomo_recall_ideas as ideas

    args = ["--data", str(tiny_locomo), "--embedder", str(tiny_embedder), "--cache", str(tmp_path)]
    turns = _run([*args, "--split", "tune", "--modes", "turns", "--k", "1,2,6"], capsys)
    convs = _tune_turns(tiny_locomo)
    embedder = CachedEmbedder(str(tiny_embedder), tmp_path)
    try:
        (tmp_path / "banks").mkdir()
        (tmp_path / "one").mkdir()
        found = ideas.recall_of_ideas(convs, embedder, [1, 2, 6], tmp_path / "banks")
        c = ideas.Conversation(convs[0], embedder, tmp_path / "one")
        vector = embed_texts(embedder, ["corgi"], query=True)[0]
        capped = ideas.session_cap(1, keep=0)(c, "corgi", vector)  # one turn per session, then the rest
        c.mem.close()
    finally:
        embedder.close()
    expected = turns["results"]["train+val"]["turns"]["recall"]
    assert {str(k): round(r, 4) for k, r in found["default (what ask ranks)"].items()} == expected
    assert all(by_k[6] == 1.0 for by_k in found.values()), found
    order = ideas.best_first(capped)
    assert len(order) == 6 and {c.session[t] for t in order[:2]} == {"1", "2"}
    assert ideas.main([*args, "--k", "6"]) == 0
    assert "| default (what ask ranks) | 1.000 |" in capsys.readouterr().out


def test_llm_expansion_ideas_ask_the_model_once_per_question(
    tiny_locomo: Path, tiny_embedder: Path, tiny_chat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--chat adds the query expansion rows; the model's replies are cached, so a second run needs no model."""
    from benchmarks import locomo_recall_ideas as ideas

    model = tmp_path / "chat.gguf"
    model.write_bytes(tiny_chat.read_bytes())
    args = ["--data", str(tiny_locomo), "--embedder", str(tiny_embedder), "--cache", str(tmp_path), "--k", "6"]
    assert ideas.main([*args, "--chat", str(model)]) == 0
    first = capsys.readouterr().out
    replies = json.loads((tmp_path / "expansions-chat.json").read_text())
    assert len(replies) == 3  # train and val ask the same three questions that have evidence
    model.unlink()
    assert ideas.main([*args, "--chat", str(model)]) == 0
    assert capsys.readouterr().out == first
    assert "| LLM terms in the BM25 query | 1.000 |" in first


def test_llm_terms_reach_the_word_search(tiny_locomo: Path, tiny_embedder: Path, tmp_path: Path) -> None:
    """A term the question lacks ("corgi") lifts the turn that says it, through BM25's query."""
    from benchmarks import locomo_recall_ideas as ideas

    (tmp_path / "expansions-none.json").write_text(json.dumps({"Which pet?": {"message": "", "terms": ["corgi"]}}))
    expand = ideas.Expansions(str(tmp_path / "none.gguf"), tmp_path)  # no model: every reply is cached
    convs = _tune_turns(tiny_locomo)
    embedder = CachedEmbedder(str(tiny_embedder), tmp_path)
    try:
        c = ideas.Conversation(convs[0], embedder, tmp_path)
        vector = embed_texts(embedder, ["Which pet?"], query=True)[0]
        plain = ideas.base(c, "Which pet?", vector)
        lifted = ideas.expanded(expand, vector=False, words=True)(c, "Which pet?", vector)
        c.mem.close()
    finally:
        embedder.close()
    corgi = next(t for t, dia in c.dia.items() if dia == "D1:1")
    assert lifted[corgi] > plain[corgi] + 0.5  # BM25's one hit scores 1 after its norm


# ---- ensure_locomo ----


def _sample_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "served" / "locomo10.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"sample_id": "conv-1", "qa": [], "conversation": {}}]), encoding="utf-8")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_ensure_locomo_prefers_the_local_file(tmp_path: Path) -> None:
    path, _ = _sample_file(tmp_path)
    assert datasets.ensure_locomo(path, url="http://127.0.0.1:9/never", cache=tmp_path / "c") == path


def test_ensure_locomo_fetches_checks_and_caches(tmp_path: Path) -> None:
    source, digest = _sample_file(tmp_path)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="sha256"):
        datasets.ensure_locomo(tmp_path / "absent.json", url=source.as_uri(), cache=cache)  # the real digest
    assert not list(cache.glob("*"))  # nothing half-written under the real name
    got = datasets.ensure_locomo(tmp_path / "absent.json", url=source.as_uri(), sha256=digest, cache=cache)
    assert got == cache / "locomo10.json" and got.read_bytes() == source.read_bytes()
    source.unlink()
    assert datasets.ensure_locomo(tmp_path / "absent.json", url=source.as_uri(), cache=cache) == got  # cached
    with pytest.raises(FileNotFoundError, match="could not be fetched"):
        datasets.ensure_locomo(tmp_path / "absent.json", url=source.as_uri(), cache=tmp_path / "other")


def test_ensure_locomo_over_http(tmp_path: Path) -> None:
    source, digest = _sample_file(tmp_path)
    (source.parent / "not-locomo.json").write_text("{}", encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(source.parent))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        got = datasets.ensure_locomo(
            tmp_path / "absent.json", url=f"{base}/locomo10.json", sha256=digest, cache=tmp_path / "cache"
        )
        assert json.loads(got.read_text())[0]["sample_id"] == "conv-1"
        with pytest.raises(ValueError, match="not LoCoMo data"):
            datasets.ensure_locomo(
                tmp_path / "absent.json", url=f"{base}/not-locomo.json", sha256=None, cache=tmp_path / "cache"
            )
        with pytest.raises(FileNotFoundError):
            datasets.ensure_locomo(tmp_path / "absent.json", url=f"{base}/missing.json", cache=tmp_path / "c2")
    finally:
        server.shutdown()
        server.server_close()
