"""CPU smoke test of the training stack: one GRPO step of each agent on a tiny random-weight model built
locally, with the real rewards, then export to GGUF and a round trip through memr1 on llama.cpp. One more
step starts from the GGUF that memr1 runs (SmolLM2 in ../shared, skipped without it).

Skipped when torch, trl or peft are missing; CI installs them (the finetune extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from finetune import train  # noqa: E402

# first: without CUDA, TRITON_INTERPRET must be set before triton.language loads, and transformers loads it
CUDA = train.prepare_backend(use_unsloth=False)
for module in ("transformers", "trl", "peft", "datasets", "matplotlib", *(() if CUDA else ("triton",))):
    pytest.importorskip(module)  # triton: TRL's log-prob kernel, which Triton's interpreter runs on the CPU

import numpy as np  # noqa: E402
from finetune import data, export  # noqa: E402
from finetune.tiny import write_hf_chat_model  # noqa: E402
from gguf import GGUFReader  # noqa: E402

from memr1 import Memory, ModelOutputError  # noqa: E402
from memr1.embedding import header  # noqa: E402

from .conftest import SMOLLM2, needs_smollm2  # noqa: E402
from .test_finetune_data import locomo_sample  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_embedder):
    """Examples from two LoCoMo-shaped conversations (train and val), and the tiny policy."""
    root = tmp_path_factory.mktemp("finetune")
    data.build(
        [locomo_sample("conv-26"), locomo_sample("conv-30")],
        root / "data",
        manager=None,
        embedder=tiny_embedder,
        progress=False,
    )
    write_hf_chat_model(root / "policy")
    return root


def settings(agent, workdir, tiny_embedder, tiny_chat) -> train.Settings:
    return train.load_settings(
        agent,
        tiny=True,
        overrides={
            "base_model": str(workdir / "policy"),
            "frozen_answerer": str(tiny_chat),
            "embedder": str(tiny_embedder),
        },
    )


def test_completions_are_as_long_as_memr1_lets_each_agent_write():
    """Training asks for what inference allows: memr1's own caps, unless a setting overrides them."""
    from memr1 import agents

    assert train.load_settings("answer").max_completion_length == agents.ANSWER_MAX_TOKENS
    assert train.load_settings("manager").max_completion_length == agents.MANAGER_MAX_TOKENS
    assert train.load_settings("manager", tiny=True).max_completion_length == 48
    assert train.load_settings("answer", overrides={"max_completion_length": 100}).max_completion_length == 100


def check_run(result, out, agent, workdir):
    assert result["steps"] == 1 and result["device"] == ("cuda" if CUDA else "cpu")
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    reward = f"rewards/{'AnswerReward' if agent == 'answer' else 'ManagerReward'}/mean"
    assert steps[0]["step"] == 1 and 0.0 <= steps[0][reward] <= 1.0  # the real reward scored the step's completions
    for phase in ("before", "after"):
        scores = result["validation"][phase]
        assert scores["count"] == len(data.load(workdir / "data", "val", agent))
        assert set(scores) == {"count", "parsed", "f1", "b1", "em"}
        assert all(0.0 <= scores[k] <= 100.0 for k in ("parsed", "f1", "b1", "em"))
    assert json.loads((out / "eval.json").read_text())["validation"] == result["validation"]
    assert (out / "rewards.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "adapter" / "adapter_config.json").exists()


def test_grpo_step_of_the_manager(workdir, tiny_embedder, tiny_chat):
    out = workdir / "manager"
    check_run(
        train.run("manager", settings("manager", workdir, tiny_embedder, tiny_chat), workdir / "data", out),
        out,
        "manager",
        workdir,
    )


def test_grpo_step_of_the_answer_agent_then_export(workdir, tiny_embedder, tiny_chat):
    from safetensors.torch import load_file, save_file

    out = workdir / "answer"
    check_run(
        train.run("answer", settings("answer", workdir, tiny_embedder, tiny_chat), workdir / "data", out),
        out,
        "answer",
        workdir,
    )

    # A random policy earns no reward, so its step leaves LoRA at zero and the merge would change nothing:
    # give the adapter weights, so that the export is seen to merge them.
    adapter = out / "adapter" / "adapter_model.safetensors"
    tensors = load_file(adapter)
    generator = torch.Generator().manual_seed(0)
    for name in [n for n in tensors if "lora_B" in n]:
        tensors[name] = torch.randn(tensors[name].shape, generator=generator) * 0.1
    save_file(tensors, adapter)

    summary = export.export(workdir / "export", adapter=out / "adapter", embedder=str(tiny_embedder))
    assert 0 < summary["gguf_bytes"] < summary["f16_bytes"]
    meta = header(Path(summary["gguf"]))
    assert meta["general.architecture"] == "llama" and "<|im_start|>" in meta["tokenizer.chat_template"]
    assert summary["verify"]["llm_calls"] == 2  # observe and ask went through the exported model

    # the f16 file holds base + scale * B @ A, computed here independently of peft (v_proj is not permuted)
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    base = load_file(workdir / "policy" / "model.safetensors")["model.layers.0.self_attn.v_proj.weight"]
    key = "base_model.model.model.layers.0.self_attn.v_proj.lora_{}.weight"
    expected = base + scale * tensors[key.format("B")] @ tensors[key.format("A")]
    assert not torch.allclose(expected, base, atol=1e-3)
    gguf_v = next(t for t in GGUFReader(summary["f16"]).tensors if t.name == "blk.0.attn_v.weight")
    np.testing.assert_allclose(
        np.asarray(gguf_v.data, dtype=np.float32).reshape(expected.shape), expected.numpy(), atol=2e-3, rtol=2e-3
    )


@needs_smollm2
def test_grpo_step_from_the_gguf_memr1_runs_then_export(workdir, tiny_embedder, tiny_chat, tmp_path):
    """Training starts from the GGUF file that memr1 runs; export finds it again from the adapter (issue 14)."""
    out = workdir / "smollm2-answer"
    overrides = {"base_model": str(SMOLLM2), "max_completion_length": 8, "eval_limit": 1, "eval_batch_size": 1}
    result = train.run(
        "answer",
        settings("answer", workdir, tiny_embedder, tiny_chat).model_copy(update=overrides),
        workdir / "data",
        out,
    )
    assert result["steps"] == 1 and result["validation"]["after"]["count"] == 1
    adapter = out / "adapter"
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(SMOLLM2.resolve())  # the file itself, which export merges into
    # bos, eos and pad as the file has them (transformers reads the eos id as bos for GPT-2-style vocabularies)
    tokenizer = json.loads((adapter / "tokenizer_config.json").read_text())
    assert (tokenizer["bos_token"], tokenizer["eos_token"], tokenizer["pad_token"]) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )

    summary = export.export(workdir / "smollm2-export", adapter=adapter, check=False)
    meta, base = header(Path(summary["gguf"])), header(SMOLLM2)
    for key in ("general.architecture", "llama.block_count", "tokenizer.ggml.model", "tokenizer.ggml.pre"):
        assert meta[key] == base[key]  # the base file's own vocabulary: the rebuilt one does not convert back
    assert "<|im_start|>" in meta["tokenizer.chat_template"]

    # loading must succeed; what the model writes after one step on random prompts is not tested
    gguf = Path(summary["gguf"])
    with Memory(tmp_path / "bank.db", embedder=tiny_embedder, manager=gguf, answerer=gguf) as mem:
        try:
            mem.observe("I adopted a dog named Buddy.", speaker="Andrew", at="2023-05-08T13:56")
        except ModelOutputError:
            pass
        mem.add("Andrew adopted a dog named Buddy.", at="2023-05-08")
        try:
            assert isinstance(mem.ask("What is the name of Andrew's dog?").text, str)
        except ModelOutputError:
            pass
