import json
import time

import numpy as np
import pytest

from memr1.tiny_models import write_chat_model, write_embedding_model

llama_cpp = pytest.importorskip("llama_cpp")

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}


@pytest.fixture(scope="module")
def embed_llm(tmp_path_factory):
    path = write_embedding_model(tmp_path_factory.mktemp("m") / "embed.gguf", dim=32, seed=1)
    assert path.stat().st_size < 5_000_000
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), embedding=True, verbose=False)
    assert time.perf_counter() - t0 < 5.0
    return llm


@pytest.fixture(scope="module")
def chat_llm(tmp_path_factory):
    path = write_chat_model(tmp_path_factory.mktemp("m") / "chat.gguf", seed=0)
    assert path.stat().st_size < 5_000_000
    return llama_cpp.Llama(model_path=str(path), n_ctx=2048, verbose=False, seed=0)


def test_embedding_dim_and_determinism(embed_llm):
    assert embed_llm.n_embd() == 32
    a, b = embed_llm.embed(["hello world", "another text"])
    assert len(a) == len(b) == 32
    assert not np.allclose(a, b)
    assert np.allclose(embed_llm.embed("hello world"), a, atol=1e-4)  # batched vs single: ~1e-5 noise


def test_embedding_handles_arbitrary_text(embed_llm):
    vecs = embed_llm.embed(["Ünïcødé ✓ & <|im_start|>", "x" * 300, "Coffee? 42!"])
    assert all(len(v) == 32 and np.all(np.isfinite(v)) for v in vecs)


def test_embedding_file_is_seed_deterministic(tmp_path):
    a = write_embedding_model(tmp_path / "a.gguf", seed=3).read_bytes()
    b = write_embedding_model(tmp_path / "b.gguf", seed=3).read_bytes()
    c = write_embedding_model(tmp_path / "c.gguf", seed=4).read_bytes()
    assert a == b and a != c


def test_chat_json_schema_outputs(chat_llm):
    messages = [
        {"role": "system", "content": "Answer in JSON."},
        {"role": "user", "content": "What is my favourite drink? ünïcødé"},
    ]
    ok, contents = 0, []
    for seed in range(20):
        out = chat_llm.create_chat_completion(
            messages=messages,
            response_format={"type": "json_object", "schema": SCHEMA},
            max_tokens=256,
            temperature=1.0,
            seed=seed,
        )
        content = out["choices"][0]["message"]["content"]
        contents.append(content)
        try:
            obj = json.loads(content)
        except json.JSONDecodeError:
            continue
        ok += isinstance(obj, dict) and isinstance(obj.get("answer"), str)
    print(f"valid JSON outputs: {ok}/20")
    assert ok >= 17, contents
    assert len(set(contents)) > 5  # sampling is not degenerate


def test_chat_special_tokens_not_parsed_from_plain_text(chat_llm):
    im_start = chat_llm.tokenize(b"<|im_start|>", add_bos=False, special=True)
    assert len(im_start) == 1
    plain = chat_llm.tokenize(b"<|im_start|>", add_bos=False, special=False)
    assert im_start[0] not in plain and len(plain) > 1
    assert chat_llm.detokenize(plain) == b"<|im_start|>"
    assert chat_llm.token_eos() == chat_llm.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]


def test_chat_metadata(chat_llm):
    md = chat_llm.metadata
    assert "<|im_start|>" in md["tokenizer.chat_template"]
    assert md["general.name"] == "memr1-tiny-chat"
    text = 'naïve ☕ 日本語 {"k": 1}\n'
    assert chat_llm.detokenize(chat_llm.tokenize(text.encode(), add_bos=False)).decode() == text
