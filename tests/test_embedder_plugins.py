"""Embedders beyond GGUF: the query flag through embed_texts, refs with a registered or entry-point scheme."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from memr1 import embedding
from memr1.embedding import LlamaEmbedder, embed_texts, embedder_from_ref, register_embedder
from memr1.errors import InvalidInput, ModelNotAvailable

PIN = "@sha256:" + "ab" * 32


class HashingEmbedder:
    """Each word hashed, with the seed, to one of 64 dimensions and a sign; rows are unit length.

    Queries skip question words, as asymmetric models weigh them less: "what is the chess club" as a
    query lands on the memory "chess club"."""

    dim = 64
    QUESTION_WORDS = frozenset("what when where who why how is are the a".split())

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.ref = f"hashwords:{seed}"
        self.identity = f"hashwords-{seed}"

    @classmethod
    def from_ref(cls, ref: str) -> HashingEmbedder:
        return cls(int(ref.partition(":")[2] or 0))

    def embed(self, texts: Sequence[str], *, query: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, text in zip(out, texts):
            for word in text.lower().split():
                if query and word in self.QUESTION_WORDS:
                    continue
                h = hashlib.blake2b(f"{self.seed}:{word}".encode(), digest_size=8).digest()
                row[h[0] % self.dim] += 1.0 if h[1] & 1 else -1.0
            row /= np.linalg.norm(row) or 1.0
        return out


class OldStyleEmbedder(HashingEmbedder):
    """An embedder written before `query` existed; numpy's default float64 comes out of it."""

    def embed(self, texts):  # type: ignore[override]
        return super().embed(texts).astype(np.float64)


class KeywordsEmbedder(HashingEmbedder):
    """Takes `query` through **options, as a wrapper around another library might."""

    def embed(self, texts, **options):  # type: ignore[override]
        return super().embed(texts, query=options.get("query", False))


class ListEmbedder(HashingEmbedder):
    """Returns plain lists of floats rather than an array."""

    def embed(self, texts, *, query=False):  # type: ignore[override]
        return super().embed(texts, query=query).tolist()


class BrokenEmbedder:
    """Returns whatever `make(n)` builds for n texts: how a faulty plugin misbehaves."""

    identity = "broken"
    dim = 4
    ref = "broken:1"

    def __init__(self, make) -> None:
        self.make = make

    def embed(self, texts, *, query=False):
        return self.make(len(texts))


@pytest.fixture(autouse=True)
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no registered scheme, and leaves none behind."""
    monkeypatch.setattr(embedding, "_FACTORIES", {})


# ---- embed_texts ----


def test_query_reaches_an_embedder_that_takes_it() -> None:
    emb = HashingEmbedder(3)
    question = ["what is the chess club"]
    as_query = embed_texts(emb, question, query=True)
    assert np.array_equal(as_query, emb.embed(question, query=True))
    assert np.array_equal(as_query, emb.embed(["chess club"]))
    assert not np.array_equal(embed_texts(emb, question), as_query)
    assert as_query.dtype == np.float32 and as_query.shape == (1, 64)


def test_an_old_embedder_without_query_still_works() -> None:
    emb = OldStyleEmbedder(3)
    out = embed_texts(emb, ["what is the chess club", "river walk"], query=True)
    assert out.dtype == np.float32 and out.shape == (2, 64)  # float64 rows would be stored as 128 floats
    assert np.allclose(out, HashingEmbedder(3).embed(["what is the chess club", "river walk"]))  # no query
    assert embedding._TAKES_QUERY[OldStyleEmbedder] is False and embedding._TAKES_QUERY[HashingEmbedder] is True


def test_query_through_keyword_options_and_lists() -> None:
    question = ["what is the chess club"]
    want = HashingEmbedder(1).embed(question, query=True)
    assert np.array_equal(embed_texts(KeywordsEmbedder(1), question, query=True), want)
    assert np.array_equal(embed_texts(ListEmbedder(1), question, query=True), want)


def test_no_texts_asks_the_embedder_nothing() -> None:
    def never(n: int) -> np.ndarray:
        raise AssertionError("embed was called for no texts")

    out = embed_texts(BrokenEmbedder(never), [])
    assert out.shape == (0, 4) and out.dtype == np.float32


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda n: np.ones((1, 4), np.float32), r"shape \(1, 4\) for 2 texts"),  # one row for two texts
        (lambda n: np.ones((n, 5), np.float32), r"expected \(2, 4\)"),  # wrong size
        (lambda n: np.ones(4, np.float32), r"shape \(4,\)"),
        (lambda n: np.ones((n, 4, 1), np.float32), r"shape \(2, 4, 1\)"),
        (lambda n: np.full((n, 4), np.nan, np.float32), "NaN or infinite values \\(text 0\\)"),
        (lambda n: np.vstack([np.ones(4), [0, np.inf, 0, 0]]), "NaN or infinite values \\(text 1\\)"),
        (lambda n: [[1.0, 0, 0, 0], [1.0, 0]], "not an array of vectors|shape"),  # ragged
        (lambda n: np.full((n, 4), "x"), "expected real numbers"),
        (lambda n: np.ones((n, 4), complex), "expected real numbers"),
        (lambda n: None, "shape"),
    ],
)
def test_bad_vectors_are_refused(make, message: str) -> None:
    with pytest.raises(ModelNotAvailable, match=message) as caught:
        embed_texts(BrokenEmbedder(make), ["first", "second"])
    assert "broken:1" in str(caught.value)  # the message names the embedder


def test_a_real_gguf_embedder_through_embed_texts(tiny_embedder: Path) -> None:
    emb = LlamaEmbedder(tiny_embedder, query_prefix="query: ")
    out = embed_texts(emb, ["chess club"], query=True)
    assert out.shape == (1, 32) and np.array_equal(out, emb.embed(["query: chess club"]))


# ---- refs: registered schemes ----


def test_a_registered_scheme_builds_the_embedder_again() -> None:
    register_embedder("hashwords", HashingEmbedder.from_ref)
    emb = embedder_from_ref("hashwords:7")
    assert isinstance(emb, HashingEmbedder) and emb.seed == 7 and emb.ref == "hashwords:7"
    again = embedder_from_ref(emb.ref)  # what a bank records is enough to rebuild it
    texts = ["river walk in the rain", "chess club"]
    assert np.array_equal(embed_texts(again, texts), embed_texts(HashingEmbedder(7), texts))
    register_embedder("hashwords", lambda ref: HashingEmbedder(99))  # a later registration replaces it
    assert embedder_from_ref("hashwords:7").seed == 99


@pytest.mark.parametrize("scheme", ["x", "C", "Hash", "has space", "1abc", "hf", "", "a:b", None])
def test_bad_schemes_are_refused(scheme) -> None:
    with pytest.raises(InvalidInput):
        register_embedder(scheme, HashingEmbedder.from_ref)


def test_a_factory_must_be_callable() -> None:
    with pytest.raises(InvalidInput, match="callable"):
        register_embedder("hashwords", HashingEmbedder(1))  # type: ignore[arg-type]


def test_an_unknown_scheme_says_how_to_register_it() -> None:
    with pytest.raises(ModelNotAvailable, match="'nosuch'") as caught:
        embedder_from_ref("nosuch:thing", named_by="the bank /tmp/b.db")
    text = str(caught.value)
    assert "register_embedder('nosuch', factory)" in text and "memr1.embedders" in text
    assert "the bank /tmp/b.db" in text


def test_a_failing_factory_or_a_non_embedder_is_refused() -> None:
    def fails(ref: str) -> HashingEmbedder:
        raise RuntimeError("no GPU here")

    def refuses(ref: str) -> HashingEmbedder:
        raise ModelNotAvailable("the plugin's own words")

    register_embedder("fails", fails)
    register_embedder("refuses", refuses)
    register_embedder("notone", lambda ref: "a string")  # type: ignore[arg-type,return-value]
    register_embedder("noembed", lambda ref: type("Half", (), {"identity": "half", "dim": 4})())
    with pytest.raises(ModelNotAvailable, match="'fails' failed on 'fails:x'.*no GPU here"):
        embedder_from_ref("fails:x")
    with pytest.raises(ModelNotAvailable, match="^the plugin's own words$"):
        embedder_from_ref("refuses:x")
    with pytest.raises(ModelNotAvailable, match="returned str, which is not an Embedder"):
        embedder_from_ref("notone:x")
    with pytest.raises(ModelNotAvailable, match="returned Half"):
        embedder_from_ref("noembed:x")


def test_a_factory_embedder_is_not_made_to_resolve_its_file() -> None:
    """The check reads attributes statically: a lazy LlamaEmbedder from a factory stays unresolved."""
    register_embedder("lazy", lambda ref: LlamaEmbedder("/nowhere/model.gguf"))
    emb = embedder_from_ref("lazy:x")
    assert isinstance(emb, LlamaEmbedder) and emb._path is None


# ---- refs: GGUF files and hub refs stay GGUF ----


@pytest.mark.parametrize(
    "ref",
    [
        "owner/repo/model.Q8_0.gguf" + PIN,
        "hf://owner/repo/model.gguf" + PIN,
        "hf://owner/repo/model.gguf",
        "model.gguf" + PIN,
        "C:\\models\\model.gguf",
        "c:/models/model.gguf",
        "/abs/path/model.gguf",
        "./model.gguf",
    ],
)
def test_gguf_refs_are_not_schemes(ref: str) -> None:
    register_embedder("owner", HashingEmbedder.from_ref)  # a scheme spelled like a hub owner changes nothing
    register_embedder("model.gguf", HashingEmbedder.from_ref)
    emb = embedder_from_ref(ref, n_threads=2, named_by="the bank b.db")
    assert type(emb) is LlamaEmbedder and emb.ref == ref and emb.n_threads == 2 and emb.named_by == "the bank b.db"


def test_a_gguf_file_loads(tiny_embedder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    emb = embedder_from_ref(str(tiny_embedder))
    assert type(emb) is LlamaEmbedder and emb.dim == 32
    assert embed_texts(emb, ["chess club"]).shape == (1, 32)
    monkeypatch.chdir(tmp_path)  # a relative file name with a colon, under no registered scheme
    Path("tiny:embed.gguf").write_bytes(tiny_embedder.read_bytes())
    assert embedder_from_ref("tiny:embed.gguf").dim == 32


# ---- refs: entry points of installed packages ----


def _install_plugin(root: Path, name: str, entry_points: str) -> None:
    """A distribution as pip leaves it: dist-info with METADATA and entry_points.txt, beside its module."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text(entry_points, encoding="utf-8")


def test_an_entry_point_is_found_and_loaded_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "memr1_fake_plugin.py").write_text(
        f"from {HashingEmbedder.__module__} import HashingEmbedder\n"
        "def factory(ref):\n"
        "    return HashingEmbedder.from_ref(ref)\n",
        encoding="utf-8",
    )
    _install_plugin(
        tmp_path,
        "fake_dist",
        "[memr1.embedders]\nhashwords-ep = memr1_fake_plugin:factory\nbroken-ep = memr1_fake_plugin:missing\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # also invalidates import caches
    monkeypatch.delitem(sys.modules, "memr1_fake_plugin", raising=False)
    assert "memr1_fake_plugin" not in sys.modules  # installed, not imported: plugins load only when named
    emb = embedder_from_ref("hashwords-ep:5")
    assert isinstance(emb, HashingEmbedder) and emb.seed == 5
    assert "memr1_fake_plugin" in sys.modules and "hashwords-ep" in embedding._FACTORIES
    with pytest.raises(ModelNotAvailable, match="plugin 'memr1_fake_plugin:missing' for scheme 'broken-ep' failed"):
        embedder_from_ref("broken-ep:1")
    register_embedder("hashwords-ep", lambda ref: HashingEmbedder(42))  # an explicit registration wins
    assert embedder_from_ref("hashwords-ep:5").seed == 42


def test_two_packages_declaring_one_scheme_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _install_plugin(tmp_path / "a", "fake_a", "[memr1.embedders]\ntwice = fake_a:factory\n")
    _install_plugin(tmp_path / "b", "fake_b", "[memr1.embedders]\ntwice = fake_b:factory\n")
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))
    with pytest.raises(ModelNotAvailable, match="several installed packages.*fake_a:factory, fake_b:factory"):
        embedder_from_ref("twice:1")


def test_a_bank_made_with_a_custom_embedder_reopens_from_its_record(tmp_path: Path) -> None:
    """The bank records the embedder's ref; reopened without embedder=, the registered factory rebuilds it."""
    from memr1 import Memory

    register_embedder("hashwords", HashingEmbedder.from_ref)
    with Memory(tmp_path / "b.db", embedder=HashingEmbedder(7)) as mem:
        mem.add("Andrew plays chess at the club on Tuesdays.")
        mem.add("Gina opened a dance studio.")
    with Memory(tmp_path / "b.db") as mem:
        assert isinstance(mem.embedder, HashingEmbedder) and mem.embedder.seed == 7
        assert mem.search("what is the chess club", 1, mode="vector")[0].memory.text.startswith("Andrew plays chess")


def test_a_custom_embedder_by_ref_as_an_argument(tmp_path: Path) -> None:
    from memr1 import Memory

    register_embedder("hashwords", HashingEmbedder.from_ref)
    with Memory(tmp_path / "b.db", embedder="hashwords:3") as mem:
        mem.add("Gina opened a dance studio.")
        assert mem.stats()["embedder"] == "hashwords-3"
