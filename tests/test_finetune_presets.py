"""finetune.train's named presets: [preset.NAME] tables of config.toml, applied after the agent's table, before --set.

Fast: settings only, no model is loaded (torch is not needed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from finetune import train

import memr1.memory

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
base_model = "top"
target_modules = ["q_proj"]
k = 60
lora_r = 32
learning_rate = 1e-6
reward = "em"

[answer]
k = 50
lora_r = 8

[manager]

[preset.small]
base_model = "preset"
k = 18
learning_rate = 2e-5

[preset.small.answer]
reward = "f1"

[tiny]
learning_rate = 1e-3
"""


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def test_a_preset_applies_after_the_agents_table(config):
    s = train.load_settings("answer", config, preset="small")
    assert (s.base_model, s.k, s.learning_rate, s.reward) == ("preset", 18, 2e-5, "f1")  # the preset's
    assert s.lora_r == 8  # the agent's table, where the preset says nothing
    manager = train.load_settings("manager", config, preset="small")
    assert (manager.k, manager.reward) == (18, "em")  # [preset.small.answer] is the answer agent's only
    assert train.load_settings("answer", config).k == 50  # no preset: as before


def test_set_beats_the_preset_and_tiny_beats_both(config):
    s = train.load_settings("answer", config, preset="small", overrides={"k": 7, "reward": "em"})
    assert (s.k, s.reward, s.base_model) == (7, "em", "preset")
    assert train.load_settings("answer", config, preset="small", tiny=True).learning_rate == 1e-3


def test_an_unknown_preset_is_a_clear_error(config, capsys):
    with pytest.raises(ValueError, match=r"no preset 'big' in .*config.toml \(presets: small\)"):
        train.load_settings("answer", config, preset="big")
    with pytest.raises(SystemExit) as e:  # on the command line: a usage error, before anything is loaded
        train.main(["answer", "--data", "d", "--out", "o", "--config", str(config), "--preset", "big"])
    assert e.value.code == 2 and "no preset 'big'" in capsys.readouterr().err


def test_the_cpu_smollm2_preset():
    """The shipped preset: SmolLM2's GGUF on a CPU, LoRA, groups of 4, F1 under memr1's grammar, k = 18, ask's
    default prompt (no distillation), stopped by time; no KL reference or recomputed activations on a CPU."""
    assert "cpu-smollm2" in train.presets()
    s = train.load_settings("answer", preset="cpu-smollm2")
    assert s.base_model == "../shared/models/SmolLM2-135M-Instruct.Q4_1.gguf" and not s.use_unsloth
    assert (s.num_generations, s.per_device_train_batch_size) == (4, 4)
    assert s.per_device_train_batch_size % s.num_generations == 0  # TRL refuses otherwise
    assert s.reward == "f1" and s.constrained and s.k == 18 and s.max_steps > 0 and 0 < s.max_minutes <= 60
    assert s.distill is memr1.memory.DEFAULT_DISTILL
    assert s.beta == 0 and not s.gradient_checkpointing
    assert 1e-5 <= s.learning_rate <= 1e-4
    assert train.load_settings("answer", preset="cpu-smollm2", overrides={"max_steps": 2}).max_steps == 2
