"""Model references: local paths, hub references, offline failures and sha256 pins."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from memr1 import IncompatibleBank, LlamaEmbedder, Memory, ModelNotAvailable
from memr1.models import parse_ref, resolve


def test_references_are_parsed() -> None:
    ref = parse_ref("Qwen/Qwen2.5-1.5B-Instruct-GGUF/qwen2.5-1.5b-instruct-q4_k_m.gguf")
    assert (ref.repo_id, ref.filename, ref.path) == (
        "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
        "qwen2.5-1.5b-instruct-q4_k_m.gguf",
        None,
    )
    assert parse_ref("hf://a/b/sub/dir/m.gguf").filename == "sub/dir/m.gguf"
    pinned = parse_ref("a/b/m.gguf@sha256:" + "ab" * 32)
    assert pinned.sha256 == "ab" * 32 and pinned.filename == "m.gguf"
    assert parse_ref("./models/m.gguf").path == Path("models/m.gguf")
    assert parse_ref("m.gguf").path == Path("m.gguf")


def test_missing_local_file_names_the_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable, match="nowhere.gguf"):
        resolve(tmp_path / "nowhere.gguf")


def test_unreachable_hub_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailable, match="memr1-test/not-here/model.gguf"):
        resolve("memr1-test/not-here/model.gguf")


def test_hub_cache_is_used_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_embedder: Path) -> None:
    """A file already in the hub cache layout resolves with the network off."""
    import huggingface_hub.constants as c

    cache = tmp_path / "hub"
    snap = cache / "models--memr1-test--tiny" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap / "tiny.gguf").write_bytes(tiny_embedder.read_bytes())
    (cache / "models--memr1-test--tiny" / "refs").mkdir()
    (cache / "models--memr1-test--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    path = resolve("memr1-test/tiny/tiny.gguf")
    assert path.read_bytes() == tiny_embedder.read_bytes()


def test_sha256_pin_accepts_the_right_file_and_refuses_another(tiny_embedder: Path) -> None:
    digest = hashlib.sha256(tiny_embedder.read_bytes()).hexdigest()
    assert resolve(f"{tiny_embedder}@sha256:{digest}") == tiny_embedder
    with pytest.raises(ModelNotAvailable, match="refusing to load"):
        resolve(f"{tiny_embedder}@sha256:{'0' * 64}")


def test_embedder_reads_its_dimension_from_the_model(tiny_embedder: Path, tiny_embedder_48: Path) -> None:
    assert LlamaEmbedder(tiny_embedder).dim == 32
    emb = LlamaEmbedder(tiny_embedder_48)
    vectors = emb.embed(["one text", "another text", "one text"])
    assert vectors.shape == (3, 48)
    assert abs(float((vectors**2).sum(axis=1)[0]) - 1.0) < 1e-4
    assert np.allclose(vectors[0], vectors[2], atol=1e-4) and not np.allclose(vectors[0], vectors[1], atol=1e-2)


def test_models_load_once_per_process(tiny_embedder: Path) -> None:
    from memr1.embedding import _loaded

    LlamaEmbedder(tiny_embedder).embed(["a"])
    before = len(_loaded)
    LlamaEmbedder(tiny_embedder).embed(["b"])
    assert len(_loaded) == before


def test_bank_refuses_an_embedder_of_another_dimension(bank: Path, tiny_embedder: Path, tiny_embedder_48: Path) -> None:
    with Memory(bank, embedder=tiny_embedder) as mem:
        mem.add("a fact")
    with pytest.raises(IncompatibleBank, match="32-d"):
        Memory(bank, embedder=tiny_embedder_48)
    with Memory(bank) as mem:  # no embedder given: the bank's own is used
        assert mem.search("a fact")[0].memory.text == "a fact"


def test_a_corrupt_gguf_is_a_clear_error(tmp_path: Path, tiny_embedder: Path) -> None:
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(tiny_embedder.read_bytes()[:1000])
    with pytest.raises(ModelNotAvailable):
        Memory(tmp_path / "b.db", embedder=bad)
