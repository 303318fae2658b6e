"""finetune.embedder: a GGUF BERT embedder loads into torch as llama.cpp runs it, learns from LoCoMo pairs,
and is written back to a GGUF that llama.cpp reads as the trained model.

Skipped when torch or transformers are missing; CI installs them (the finetune extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from finetune import embedder  # noqa: E402
from gguf import GGUFReader  # noqa: E402

from memr1 import datasets  # noqa: E402
from memr1.embedding import LlamaEmbedder  # noqa: E402

from .conftest import LOCOMO, needs_locomo  # noqa: E402
from .test_locomo_retrieval import TURNS, _conversation  # noqa: E402

TEXTS = ["Ann: I adopted a corgi named Pixel.", "what did bob bake?", "Naïve café, 2023!"]


@pytest.fixture
def locomo(tmp_path: Path) -> list[dict]:
    qa = [
        {"question": "corgi named Pixel?", "answer": "x", "evidence": ["D1:1"], "category": 4},
        {"question": "roof and croissants?", "answer": "x", "evidence": ["D2:1", "D2:2"], "category": 1},
        {"question": "oboe?", "adversarial_answer": "x", "evidence": ["D1:3"], "category": 5},
    ]
    path = tmp_path / "locomo.json"
    turns = ["I adopted a corgi named Pixel. She loves the beach", *TURNS[1:]]
    path.write_text(json.dumps([_conversation("conv-26", turns, qa)]), encoding="utf-8")
    return datasets.load_locomo(path)


def test_loaded_model_embeds_as_llama_cpp_does(tiny_embedder: Path) -> None:
    model, tokenizer = embedder.load(tiny_embedder)
    assert embedder.check(tiny_embedder, model, tokenizer, TEXTS) > 0.9999


@needs_locomo
def test_real_embedder_loads_with_its_wordpiece_vocabulary() -> None:
    base = LOCOMO.parents[1] / "models" / "all-MiniLM-L6-v2-f16.gguf"
    model, tokenizer = embedder.load(base)
    assert tokenizer.tokenize("LGBTQ support, don't") == ["lgbt", "##q", "support", ",", "don", "'", "t"]
    assert embedder.check(base, model, tokenizer, TEXTS) > 0.9999


def test_pairs_are_questions_to_their_evidence(tiny_embedder: Path, locomo: list[dict]) -> None:
    model, tokenizer = embedder.load(tiny_embedder)
    pairs = embedder.pairs(locomo, model, tokenizer, split="train", pool=3)
    assert [(p.question, p.passage) for p in pairs] == [
        ("corgi named Pixel?", "Bob: I adopted a corgi named Pixel. She loves the beach"),
        ("corgi named Pixel?", "Bob: I adopted a corgi named Pixel."),  # and each sentence, as memr1 scores it
        ("corgi named Pixel?", "Bob: She loves the beach"),
        ("roof and croissants?", "Bob: The bakery sells sourdough croissants"),
        ("roof and croissants?", "Ann: Our roof leaked during the thunderstorm"),
    ]  # the adversarial question has no evidence to learn from
    for p in pairs:
        assert len(p.negatives) == 3 and p.passage not in p.negatives
    assert not {"Bob: The bakery sells sourdough croissants", "Ann: Our roof leaked during the thunderstorm"} & set(
        pairs[3].negatives
    )  # a question's evidence is never its negative


def test_training_is_what_the_written_file_runs(tiny_embedder: Path, locomo: list[dict], tmp_path: Path) -> None:
    model, tokenizer = embedder.load(tiny_embedder)
    pairs = embedder.pairs(locomo, model, tokenizer, split="train", pool=3)
    losses = embedder.train(model, tokenizer, pairs * 4, embedder.Settings(epochs=3, lr=1e-3, batch=4, hard=2))
    assert losses[-1] < losses[0]
    out = embedder.save(model, tiny_embedder, tmp_path / "tuned.gguf")
    assert embedder.check(out, model, tokenizer, TEXTS) > 0.999  # llama.cpp runs the trained weights
    before, after = LlamaEmbedder(str(tiny_embedder)).embed(TEXTS), LlamaEmbedder(str(out)).embed(TEXTS)
    assert np.min(np.sum(before * after, axis=1)) < 0.99  # and they are not the base's
    base, tuned = GGUFReader(tiny_embedder), GGUFReader(out)
    assert [(t.name, t.tensor_type) for t in tuned.tensors] == [(t.name, t.tensor_type) for t in base.tensors]
    assert tuned.fields["tokenizer.ggml.tokens"].contents() == base.fields["tokenizer.ggml.tokens"].contents()


def test_quantized_embedder_is_refused_with_a_reason(tiny_embedder: Path, tmp_path: Path) -> None:
    from finetune import export

    quantized = export.quantize(tiny_embedder, tmp_path / "q8.gguf", "q8_0")
    with pytest.raises(SystemExit, match="Q8_0 tensors; start from the model's f16 or f32 GGUF"):
        embedder.load(quantized)
