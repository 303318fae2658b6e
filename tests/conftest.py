"""Shared fixtures: tiny random-weight GGUF models written once per session, fresh banks per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from memr1 import Memory
from memr1.tiny_models import write_embedding_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2-f16.gguf"
LOCOMO = SHARED / "data" / "locomo10.json"
SMOLLM2 = SHARED / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

needs_minilm = pytest.mark.skipif(not MINILM.exists(), reason=f"real MiniLM GGUF not found at {MINILM} (../shared)")
needs_smollm2 = pytest.mark.skipif(not SMOLLM2.exists(), reason=f"real SmolLM2 GGUF not found at {SMOLLM2} (../shared)")
needs_locomo = pytest.mark.skipif(not LOCOMO.exists(), reason=f"LoCoMo data not found at {LOCOMO} (../shared)")


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_embedding_model(tmp_path_factory.mktemp("models") / "tiny-embed.gguf", dim=32, seed=0)


@pytest.fixture(scope="session")
def tiny_embedder_48(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_embedding_model(tmp_path_factory.mktemp("models") / "tiny-embed-48.gguf", dim=48, seed=1)


@pytest.fixture
def bank(tmp_path: Path) -> Path:
    return tmp_path / "bank.db"


@pytest.fixture
def mem(bank: Path, tiny_embedder: Path):
    with Memory(bank, embedder=tiny_embedder) as m:
        yield m


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from memr1.tiny_models import write_chat_model

    return write_chat_model(tmp_path_factory.mktemp("models") / "tiny-chat.gguf", seed=0)
