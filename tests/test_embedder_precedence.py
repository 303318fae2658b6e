"""Which embedder a bank is opened with: the argument, then $MEMR1_EMBEDDER, then the bank's record.

A bank file may come from anyone, so the model it records is used only when it is already on this
machine; it is never downloaded on the bank's say-so.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from memr1 import Memory, ModelNotAvailable, models
from memr1.embedding import DEFAULT_EMBEDDER

HUB_REF = "someone/untrusted-embeddings/model.Q8_0.gguf"


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMR1_EMBEDDER", raising=False)
    monkeypatch.setattr(models, "_hub_failed_at", None)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """huggingface_hub against a private cache; a download (not local_files_only) is recorded and fails."""
    cache = tmp_path / "hf-cache"
    real = huggingface_hub.hf_hub_download
    state: dict[str, Any] = {"cache": cache, "downloads": [], "serve": None}

    def download(repo_id: str, filename: str, **kwargs: Any) -> str:
        if kwargs.get("local_files_only"):
            return real(repo_id, filename, cache_dir=cache, **kwargs)
        state["downloads"].append(f"{repo_id}/{filename}")
        if state["serve"] is None:
            raise ConnectionError("no network in this test")
        return str(state["serve"])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return state


def cache_file(cache: Path, ref: str, source: Path) -> None:
    """Lay a file out the way huggingface_hub caches a download of `ref` at revision main."""
    owner, repo, filename = ref.split("/", 2)
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{owner}--{repo}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    target = root / "snapshots" / commit / filename
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)


def recording(bank: Path, ref: str) -> None:
    """Make the bank record `ref` as its embedder, as a bank built elsewhere would."""
    with Memory(bank) as mem:
        mem.store.query("UPDATE meta SET value = ? WHERE key = 'embedder_ref'", (ref,))


@pytest.fixture
def built(bank: Path, tiny_embedder: Path) -> Path:
    with Memory(bank, embedder=tiny_embedder) as mem:
        mem.add("a fact")
    return bank


def test_the_environment_beats_the_banks_record(
    built: Path, tiny_embedder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12: README says MEMR1_EMBEDDER overrides the record, but the record won."""
    copy = tmp_path / "elsewhere" / "same-model.gguf"
    copy.parent.mkdir()
    shutil.copy(tiny_embedder, copy)
    monkeypatch.setenv("MEMR1_EMBEDDER", str(copy))
    with Memory(built) as mem:
        assert mem.embedder.ref == str(copy)  # type: ignore[attr-defined]
        mem.add("another fact")
        assert len(mem.search("fact")) == 2


def test_the_argument_beats_the_environment(built: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMR1_EMBEDDER", HUB_REF)
    with Memory(built, embedder=tiny_embedder) as mem:
        assert mem.embedder.ref == str(tiny_embedder)  # type: ignore[attr-defined]


def test_a_local_file_the_bank_names_is_used(built: Path) -> None:
    with Memory(built) as mem:
        mem.add("another fact")
        assert len(mem.list()) == 2


def test_a_hub_model_only_the_bank_names_is_not_downloaded(built: Path, hub: dict[str, Any]) -> None:
    """Issue 12: a bank received from elsewhere made memr1 fetch and load whatever hub GGUF it named."""
    recording(built, HUB_REF)
    with Memory(built) as mem:
        assert [m.text for m in mem.list()] == ["a fact"]  # what needs no embedder still works
        for attempt in (lambda: mem.add("x"), lambda: mem.search("fact")):
            with pytest.raises(ModelNotAvailable, match=r"named only by the bank .*embedder=") as refused:
                attempt()
            assert HUB_REF in str(refused.value) and "MEMR1_EMBEDDER" in str(refused.value)
    assert hub["downloads"] == []


def test_a_hub_model_the_bank_names_is_used_from_the_local_cache(
    built: Path, tiny_embedder: Path, hub: dict[str, Any]
) -> None:
    recording(built, HUB_REF)
    cache_file(hub["cache"], HUB_REF, tiny_embedder)
    with Memory(built) as mem:
        mem.add("another fact")
        assert len(mem.search("fact")) == 2
    assert hub["downloads"] == []


def test_a_missing_local_file_the_bank_names_asks_for_an_embedder(built: Path, tmp_path: Path) -> None:
    recording(built, str(tmp_path / "moved-away.gguf"))
    with Memory(built) as mem, pytest.raises(ModelNotAvailable, match="embedder="):
        mem.add("x")


def test_memr1s_default_may_still_be_fetched_for_a_bank_that_names_it(
    built: Path, tiny_embedder: Path, hub: dict[str, Any]
) -> None:
    """The default is memr1's choice, not the bank's: a new bank would fetch it just the same."""
    recording(built, DEFAULT_EMBEDDER)
    hub["serve"] = tiny_embedder
    with Memory(built) as mem:
        mem.add("another fact")
    assert hub["downloads"] == [DEFAULT_EMBEDDER]


def test_a_user_named_hub_model_is_still_downloaded(
    bank: Path, tiny_embedder: Path, hub: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub["serve"] = tiny_embedder
    monkeypatch.setenv("MEMR1_EMBEDDER", HUB_REF)
    with Memory(bank) as mem:
        mem.add("a fact")
    assert hub["downloads"] == [HUB_REF]
