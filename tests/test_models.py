"""Model references: local paths, hub references, offline failures and sha256 pins."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from memr1 import IncompatibleBank, LlamaEmbedder, Memory, ModelNotAvailable, ModelOutputError
from memr1.llm import LlamaCpp
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
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert resolve(f"memr1-test/tiny/tiny.gguf@sha256:{digest}") == path  # hub references take pins too
    with pytest.raises(ModelNotAvailable, match="refusing to load"):
        resolve(f"hf://memr1-test/tiny/tiny.gguf@sha256:{'1' * 64}")


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
    from memr1.runtime import _loaded

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


# ---- untrusted model files: pins on every role, and corrupt files that must not take the process down ----


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_pin_refuses_another_file_for_every_role(tmp_path: Path, tiny_embedder: Path, tiny_chat: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ModelNotAvailable, match="refusing to load"):
        Memory(tmp_path / "a.db", embedder=f"{tiny_embedder}@sha256:{wrong}")
    with Memory(
        tmp_path / "b.db",
        embedder=tiny_embedder,
        manager=f"{tiny_chat}@sha256:{wrong}",
        answerer=LlamaCpp(tiny_chat, sha256=wrong),
    ) as mem:
        mem.add("a fact")
        before = mem.stats()
        for call in (lambda: mem.observe("hello"), lambda: mem.ask("a fact?", sources="memories")):
            with pytest.raises(ModelNotAvailable, match="refusing to load"):
                call()
        assert mem.stats() == before
    pinned = {
        "embedder": f"{tiny_embedder}@sha256:{_sha(tiny_embedder)}",
        "manager": LlamaCpp(tiny_chat, sha256=_sha(tiny_chat).upper(), retries=0, max_tokens=16, slot="pin"),
    }
    with Memory(tmp_path / "c.db", **pinned) as mem:
        try:
            mem.observe("hello")
        except ModelOutputError:  # the random-weight model may refuse; the file was accepted and loaded
            pass
        assert mem.usage["llm_calls"] == 1
    assert LlamaEmbedder(tiny_embedder, sha256=_sha(tiny_embedder)).dim == 32


@pytest.mark.parametrize(
    ("ref", "sha256", "message"),
    [
        ("{e}@sha256:abc", None, "64 hex digits"),
        ("{e}@sha256:", None, "64 hex digits"),
        ("{e}", "xyz", "64 hex digits"),
        ("{e}@sha256:{good}", "0" * 64, "two different"),
        ("", None, "non-empty"),
        ("a\x00b.gguf", None, "non-empty"),
    ],
)
def test_malformed_pins_are_refused_never_ignored(tiny_embedder: Path, ref: str, sha256, message: str) -> None:
    ref = ref.format(e=tiny_embedder, good=_sha(tiny_embedder))
    with pytest.raises(ModelNotAvailable, match=message):
        resolve(ref, sha256=sha256)


def test_a_pinned_file_changed_in_place_is_caught(tmp_path: Path, tiny_embedder: Path) -> None:
    """Same size, mtime set back: the verified-digest cache must not vouch for the new bytes."""
    model = tmp_path / "m.gguf"
    model.write_bytes(tiny_embedder.read_bytes())
    digest = _sha(model)
    assert resolve(f"{model}@sha256:{digest}") == model
    st = model.stat()
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert model.stat().st_size == st.st_size and model.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(ModelNotAvailable, match="refusing to load"):
        resolve(f"{model}@sha256:{digest}")


def _mutated(src: Path, dst: Path, change) -> Path:
    from gguf import GGUFReader

    shutil.copy(src, dst)
    reader = GGUFReader(str(dst), "r+")
    change(reader)
    reader.data.flush()
    del reader
    return dst


def _set(name: str, value):
    def change(reader) -> None:
        field = reader.fields[name]
        part = field.parts[field.data[0]]
        part[0] = np.array(value).astype(part.dtype)

    return change


def _repeat_token(reader) -> None:  # token 1 spelled like token 0: llama.cpp asserts on its vocabulary
    field = reader.fields["tokenizer.ggml.tokens"]
    first, second = field.parts[field.data[0]], field.parts[field.data[1]]
    second[:] = first


def _break_template(reader) -> None:
    field = reader.fields["tokenizer.chat_template"]
    part = field.parts[field.data[0]]
    text = bytes(part).replace(b"endfor", b"endfxr")
    part[:] = np.frombuffer(text, dtype=part.dtype)


def _retype(name: str):
    def change(reader) -> None:
        tensor = next(t for t in reader.tensors if t.name == name)
        tensor.field.parts[4][0] = 1  # F16: half the bytes the shape needs, and a type llama.cpp cannot add

    return change


CHILD = """
import json, sys
from memr1 import LlamaEmbedder, MemR1Error, prompts
from memr1.llm import LlamaCpp
for line in sys.stdin:
    role, path = json.loads(line)
    try:
        if role == "embedder":
            LlamaEmbedder(path).embed(["hello world"])
        else:
            LlamaCpp(path, retries=0, max_tokens=8).complete(
                [{"role": "user", "content": "hi"}], prompts.ANSWER_SCHEMA, parse=lambda raw: raw)
        print(json.dumps([path, "loaded", ""]), flush=True)
    except MemR1Error as e:
        print(json.dumps([path, type(e).__name__, str(e)]), flush=True)
    except Exception as e:
        print(json.dumps([path, "not a memr1 error: " + type(e).__name__, str(e)]), flush=True)
"""


def test_corrupt_and_truncated_files_are_a_clear_error_not_a_crash(
    tmp_path: Path, tiny_embedder: Path, tiny_chat: Path
) -> None:
    """Each file below made llama.cpp abort() the process, hang, or raise a foreign error before memr1 vetted
    model files. Loading runs in a child here, so that a regression fails this test instead of killing pytest."""
    emb, chat = tiny_embedder.read_bytes(), tiny_chat.read_bytes()
    raw = {
        "empty": b"",
        "magic only": b"GGUF",
        "not a GGUF": b"hello " * 200,
        "truncated header": emb[:500],
        "truncated tensors": emb[: len(emb) // 2],
        "last byte missing": chat[:-1],
    }
    cases: list[tuple[str, str, Path, str]] = []
    for i, (name, data) in enumerate(raw.items()):
        (tmp_path / f"raw{i}.gguf").write_bytes(data)
        cases.append((name, "embedder" if i % 2 == 0 else "manager", tmp_path / f"raw{i}.gguf", "GGUF"))
    for name, role, src, change, expect in [
        ("repeated vocabulary entry", "manager", tiny_chat, _repeat_token, "repeats a token"),
        ("repeated vocabulary entry", "embedder", tiny_embedder, _repeat_token, "repeats a token"),
        ("zero layers", "manager", tiny_chat, _set("llama.block_count", 0), "SIGABRT"),
        (
            "negative norm epsilon",
            "manager",
            tiny_chat,
            _set("llama.attention.layer_norm_rms_epsilon", -1.0),
            "SIGABRT",
        ),
        ("unknown pooling type", "embedder", tiny_embedder, _set("bert.pooling_type", 99), "SIGABRT"),
        ("bias retyped to F16", "embedder", tiny_embedder, _retype("blk.0.attn_output_norm.bias"), "llama.cpp"),
        ("broken chat template", "manager", tiny_chat, _break_template, "emplate"),
    ]:
        cases.append((name, role, _mutated(src, tmp_path / f"m{len(cases)}.gguf", change), expect))
    env = {**os.environ, "MEMR1_CACHE_DIR": str(tmp_path / "cache")}
    lines = "".join(json.dumps([role, str(path)]) + "\n" for _, role, path, _ in cases)
    child = subprocess.run(
        [sys.executable, "-c", CHILD], input=lines, capture_output=True, text=True, env=env, timeout=600
    )
    assert child.returncode == 0, f"the process died ({child.returncode}): {child.stderr[-2000:]}"
    results = {path: (kind, message) for path, kind, message in map(json.loads, child.stdout.splitlines())}
    assert len(results) == len(cases)
    for name, role, path, expect in cases:
        kind, message = results[str(path)]
        assert kind == "ModelNotAvailable" and expect in message, (name, role, kind, message)
