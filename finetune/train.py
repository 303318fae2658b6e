"""GRPO training of one agent with TRL, scored on validation before and after.

    python -m finetune.train answer  --data runs/ft-data --out runs/ft-answer
    python -m finetune.train manager --data runs/ft-data --out runs/ft-manager --set frozen_answerer=A.gguf
    python -m finetune.train answer  --data runs/ft-tiny --out runs/ft-tiny-answer --tiny   # CPU smoke run
    python -m finetune.train answer  --preset cpu-smollm2 --data runs/ft-data --out runs/ft-smollm2

Settings come from finetune/config.toml (--config, --preset NAME, --set key=value). On a CUDA GPU the policy is
loaded by Unsloth's FastLanguageModel with LoRA; elsewhere by transformers + peft, and TRL's
log-probabilities are computed in PyTorch (finetune.cpu). The trainer is TRL's GRPOTrainer either
way, with the rewards of finetune.rewards, and samples every completion under memr1's grammar for
its prompt (finetune.constrained), as memr1 decodes at inference.

Written to --out: adapter/ (LoRA weights and tokenizer, for finetune.export), adapter-untrained/
(the same before any step), log.jsonl (every logged step), rewards.png (the reward curve),
eval.json (in-process validation before and after, scored with the benchmark's scorer: F1, BLEU-1
and exact match, x100, and the share of parseable outputs). With --compare, both adapters are then
exported alike and scored through memr1 on llama.cpp (finetune.evaluate): export/, validation.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from memr1 import agents, scoring

from . import base, data
from .constrained import GrammarConstraint, Vocabulary, vocabulary_file
from .rewards import AnswerReward, ManagerReward, Metric

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("finetune.train")
CONFIG = Path(__file__).with_name("config.toml")
# what memr1 lets each agent write at inference: the default of max_completion_length
MAX_TOKENS: dict[data.Agent, int] = {"answer": agents.ANSWER_MAX_TOKENS, "manager": agents.MANAGER_MAX_TOKENS}


class Settings(BaseModel):
    """One agent's training settings; config.toml documents each."""

    model_config = ConfigDict(extra="forbid")

    base_model: str
    use_unsloth: bool = True
    load_in_4bit: bool = False
    max_seq_length: int = 8192
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.0
    target_modules: list[str]
    num_generations: int = 8
    beta: float = 0.001
    learning_rate: float = 1e-6
    temperature: float = 1.0
    max_completion_length: int
    epochs: float = 2
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 4
    seed: int = 42
    reward: Metric = "em"
    format_weight: float = 0.0
    eval_limit: int = -1
    eval_batch_size: int = 8
    k: int = 60
    distill: bool = True
    constrained: bool = True
    gradient_checkpointing: bool = True
    max_minutes: float = 0
    compare_limit: int = -1
    frozen_answerer: str = ""
    frozen_base_url: str = ""
    gpu_layers: int = 0
    embedder: str = ""


def presets(path: Path = CONFIG) -> list[str]:
    """The names of the [preset.NAME] tables in a config file."""
    return sorted(tomllib.loads(path.read_text(encoding="utf-8")).get("preset", {}))


def load_settings(
    agent: data.Agent,
    path: Path = CONFIG,
    *,
    preset: str | None = None,
    tiny: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Top-level keys, then the agent's table, then [preset.NAME] when named (its own top-level keys, then
    its agent table), then [tiny] when asked, then `overrides` (--set). An unknown preset is an error.

    max_completion_length, when none of them sets it, is what memr1 lets the agent write at inference
    (memr1.agents.ANSWER_MAX_TOKENS or MANAGER_MAX_TOKENS), so that training asks for no more than that.
    """
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    merged = {key: value for key, value in raw.items() if not isinstance(value, dict)}
    merged |= raw.get(agent, {})
    if preset is not None:
        table = raw.get("preset", {}).get(preset)
        if table is None:
            known = ", ".join(sorted(raw.get("preset", {}))) or "none"
            raise ValueError(f"no preset {preset!r} in {path} (presets: {known})")
        merged |= {key: value for key, value in table.items() if not isinstance(value, dict)}
        merged |= table.get(agent, {})
    if tiny:
        merged |= raw.get("tiny", {})
    merged |= overrides or {}
    merged.setdefault("max_completion_length", MAX_TOKENS[agent])
    return Settings.model_validate(merged)


def prepare_backend(use_unsloth: bool) -> bool:
    """True on CUDA. Must run before transformers, peft or trl are imported.

    Unsloth patches those libraries when imported first. Without CUDA, TRL's GRPO log-probabilities
    still go through its Triton kernel, which Triton's interpreter runs on the CPU, provided that
    TRITON_INTERPRET is set before triton.language is first imported (transformers imports it).
    """
    import torch

    if torch.cuda.is_available():
        if use_unsloth:
            try:
                import unsloth  # noqa: F401
            except ImportError as e:
                raise SystemExit(
                    f"use_unsloth is set but unsloth is not importable ({e}): "
                    "pip install -e '.[finetune,finetune-gpu]', or --set use_unsloth=false"
                ) from None
        return True
    if os.environ.get("TRITON_INTERPRET") != "1":
        if "triton.language" in sys.modules:
            raise RuntimeError(
                "triton was imported before TRITON_INTERPRET=1 was set; without CUDA, TRL's Triton "
                "kernel needs it: set it in the environment, or call prepare_backend() first"
            )
        os.environ["TRITON_INTERPRET"] = "1"
    return False


def load_policy(settings: Settings, cuda: bool) -> tuple[Any, Any, Any]:
    """(model, tokenizer, peft_config): Unsloth applies LoRA itself; otherwise the trainer does, from peft_config.

    The base model is a hub id, a Hugging Face folder or a GGUF file (finetune.base.load_base).
    """
    import torch

    if cuda and settings.use_unsloth:
        import tempfile

        from unsloth import FastLanguageModel

        with tempfile.TemporaryDirectory(prefix="memr1-base-") as tmp:
            name = settings.base_model
            if base.gguf_file(name) is not None:  # Unsloth loads folders and hub ids: dequantise the GGUF into one
                model, tokenizer = base.load_base(name, dtype=torch.bfloat16)
                model.save_pretrained(tmp)
                tokenizer.save_pretrained(tmp)
                del model
                name = tmp
            model, tokenizer = FastLanguageModel.from_pretrained(
                model_name=name,
                max_seq_length=settings.max_seq_length,
                load_in_4bit=settings.load_in_4bit,
            )
        model = FastLanguageModel.get_peft_model(
            model,
            r=settings.lora_r,
            lora_alpha=settings.lora_alpha,
            lora_dropout=settings.lora_dropout,
            target_modules=settings.target_modules,
            use_gradient_checkpointing="unsloth",
            random_state=settings.seed,
        )
        return model, tokenizer, None
    from peft import LoraConfig

    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    model, tokenizer = base.load_base(settings.base_model, dtype=dtype)
    lora = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return model, tokenizer, lora


def make_reward(agent: data.Agent, settings: Settings) -> AnswerReward | ManagerReward:
    if agent == "answer":
        return AnswerReward(settings.reward, settings.format_weight)
    from memr1.config import AgentConfig, chat_backend
    from memr1.embedding import DEFAULT_EMBEDDER

    answerer = chat_backend(
        # gpu_layers = 0 (the default) offloads nothing: only a count asked for is refused beside frozen_base_url
        AgentConfig(model=settings.frozen_answerer or None, n_gpu_layers=settings.gpu_layers or None),
        role="frozen-answerer",
        base_url=settings.frozen_base_url or None,
    )
    return ManagerReward(answerer, settings.embedder or DEFAULT_EMBEDDER, settings.reward, k=settings.k)


def generate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[data.Example],
    settings: Settings,
    cuda: bool,
    vocabulary: Vocabulary | None = None,
) -> list[str]:
    """Greedy completions, as evaluation in the paper: no sampling, no repetition penalty; under memr1's
    grammar when a vocabulary is given, as memr1 answers."""
    import torch
    from transformers import GenerationConfig

    if cuda and settings.use_unsloth:
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    config = GenerationConfig(
        max_new_tokens=settings.max_completion_length,
        do_sample=False,
        repetition_penalty=1.0,
        eos_token_id=model.generation_config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
    )
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    texts: list[str] = []
    try:
        model.eval()
        for start in range(0, len(examples), settings.eval_batch_size):
            batch = examples[start : start + settings.eval_batch_size]
            rendered = [
                tokenizer.apply_chat_template(e.messages(), add_generation_prompt=True, tokenize=False) for e in batch
            ]
            inputs = tokenizer(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            constraint = GrammarConstraint(vocabulary, [e.schema() for e in batch]) if vocabulary else None
            try:
                with torch.no_grad():
                    out = model.generate(
                        **inputs, generation_config=config, logits_processor=[constraint] if constraint else None
                    )
            finally:
                if constraint:
                    constraint.close()
            texts += tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        model.train()
        if cuda and settings.use_unsloth:
            FastLanguageModel.for_training(model)
    return texts


def evaluate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[data.Example],
    reward: AnswerReward | ManagerReward,
    settings: Settings,
    cuda: bool,
    vocabulary: Vocabulary | None = None,
) -> dict[str, float]:
    """Validation scores of the agent's greedy outputs, with the benchmark's scorer (x100, as its reports)."""
    rows: list[tuple[str, data.Question | data.AnswerExample]] = []  # (prediction, what it answers)
    parsed = 0
    texts = generate(model, tokenizer, examples, settings, cuda, vocabulary)
    for text, example in zip(texts, examples, strict=True):
        if isinstance(example, data.AnswerExample):
            prediction = reward.predict(text, example)  # type: ignore[arg-type]
            parsed += prediction is not None
            rows.append((prediction or "", example))
        else:
            predictions = reward.predict(text, example)  # type: ignore[arg-type]
            parsed += predictions is not None
            rows += zip(predictions or [""] * len(example.questions), example.questions, strict=True)

    def mean(values: Any) -> float:
        values = list(values)
        return 100 * statistics.fmean(values) if values else float("nan")

    return {
        "count": len(examples),
        "parsed": 100 * parsed / len(examples) if examples else float("nan"),
        "f1": mean(scoring.locomo_f1(p, q.answer, q.category) for p, q in rows),
        "b1": mean(scoring.bleu1(p, q.answer) for p, q in rows),
        "em": mean(scoring.exact_match(p, q.answer) for p, q in rows),
    }


def plot(history: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = [h for h in history if "reward" in h]
    steps = [h["step"] for h in rows]
    mean = [h["reward"] for h in rows]
    std = [h.get("reward_std", 0.0) for h in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, mean, marker="o", alpha=0.6, label="mean reward of the step's completions")
    if len(mean) >= 5:  # one question per step is noisy: the trend is the running mean
        window = [statistics.fmean(mean[max(0, i - 4) : i + 1]) for i in range(len(mean))]
        ax.plot(steps, window, color="black", label="running mean of 5 steps")
    ax.fill_between(
        steps,
        [m - s for m, s in zip(mean, std)],
        [m + s for m, s in zip(mean, std)],
        alpha=0.2,
        label="± one standard deviation",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("reward")
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _step_log(path: Path, max_minutes: float = 0) -> Any:
    from transformers import TrainerCallback

    class StepLog(TrainerCallback):
        """Append every logged step to a JSONL file as it comes, so a stopped run keeps its curve; with
        max_minutes, stop after the first step that ends past that much training time."""

        started = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if max_minutes and time.perf_counter() - self.started > 60 * max_minutes:
                log.info("stopping after step %d: %.0f minutes of training", state.global_step, max_minutes)
                control.should_training_stop = True

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if logs and state.is_world_process_zero:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return StepLog()


def run(agent: data.Agent, settings: Settings, data_dir: Path, out: Path) -> dict[str, Any]:
    """Train one agent; returns what eval.json holds."""
    cuda = prepare_backend(settings.use_unsloth)
    import torch
    from trl import GRPOConfig, GRPOTrainer  # after prepare_backend: Unsloth must patch TRL first

    if not cuda:
        from .cpu import use_torch_log_probs

        use_torch_log_probs()

    bf16 = cuda and torch.cuda.is_bf16_supported()

    out.mkdir(parents=True, exist_ok=True)
    train_examples = data.load(data_dir, "train", agent)
    val_examples = data.load(data_dir, "val", agent)
    if agent == "answer":  # the Answer Agent sees what ask(k=k, distill=distill) shows: the first k items retrieved
        train_examples, val_examples = (
            [e.as_asked(settings.k, settings.distill) for e in rows] for rows in (train_examples, val_examples)
        )
    if settings.eval_limit >= 0:
        val_examples = val_examples[: settings.eval_limit]
    reward = make_reward(agent, settings)
    model, tokenizer, lora = load_policy(settings, cuda)
    vocabulary = Vocabulary(vocabulary_file(settings.base_model, out)) if settings.constrained else None
    started = time.perf_counter()
    before = evaluate(model, tokenizer, val_examples, reward, settings, cuda, vocabulary)
    log.info("validation before training: %s", before)
    (out / "log.jsonl").unlink(missing_ok=True)
    args = GRPOConfig(
        output_dir=str(out / "trainer"),
        num_generations=settings.num_generations,
        beta=settings.beta,
        learning_rate=settings.learning_rate,
        temperature=settings.temperature,
        max_completion_length=settings.max_completion_length,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        seed=settings.seed,
        gradient_checkpointing=settings.gradient_checkpointing,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        bf16=bf16,
        fp16=cuda and not bf16,
    )
    trainer = constrained_trainer(GRPOTrainer, vocabulary)(
        model=model,
        reward_funcs=[reward],
        args=args,
        train_dataset=data.to_dataset(train_examples),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[_step_log(out / "log.jsonl", settings.max_minutes)],
    )
    # the adapter before any step: LoRA's B starts at zero, so this is the base model, exported the same way as
    # the trained one for a like-for-like comparison (--compare)
    save_adapter(trainer.model, tokenizer, out / "adapter-untrained", settings.base_model)
    trainer.train()
    after = evaluate(trainer.model, tokenizer, val_examples, reward, settings, cuda, vocabulary)
    log.info("validation after training: %s", after)
    save_adapter(trainer.model, tokenizer, out / "adapter", settings.base_model)
    history = trainer.state.log_history
    plot(
        history,
        out / "rewards.png",
        f"{agent} agent, GRPO on {Path(settings.base_model).name}"
        + (f": validation F1 {before['f1']:.1f} -> {after['f1']:.1f}" if val_examples else ""),
    )
    step_seconds = [h["step_time"] for h in history if "step_time" in h]
    result = {
        "agent": agent,
        "base_model": settings.base_model,
        "device": "cuda" if cuda else "cpu",
        "steps": trainer.state.global_step,
        "seconds": time.perf_counter() - started,
        "mean_step_seconds": statistics.fmean(step_seconds) if step_seconds else None,
        "validation": {"before": before, "after": after},
        "settings": settings.model_dump(),
    }
    (out / "eval.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    if vocabulary is not None:
        vocabulary.close()
    return result


def constrained_trainer(trainer: type, vocabulary: Vocabulary | None) -> type:
    """`trainer` (TRL's GRPOTrainer), sampling each completion under the grammar of its example's schema.

    TRL passes no logits processor to `generate`, so the model's own `generate` is wrapped while TRL
    generates a batch. The batch's rows are the dataset rows TRL drew, in order, each already repeated
    for its group; each row's "example" column gives its schema.
    """
    if vocabulary is None:
        return trainer

    class Constrained(trainer):  # type: ignore[misc, valid-type]
        _schemas: list[dict[str, Any]] = []

        def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> Any:
            self._schemas = [data.example_from_json(row["example"]).schema() for row in inputs]
            return super()._generate_and_score_completions(inputs)

        def _generate_single_turn(self, prompt_ids: list[Any], *args: Any, **kwargs: Any) -> Any:
            if len(prompt_ids) != len(self._schemas):
                raise RuntimeError(f"{len(prompt_ids)} prompts to generate for, {len(self._schemas)} schemas")
            model = self.accelerator.unwrap_model(self.model)
            original = model.generate
            with GrammarConstraint(vocabulary, self._schemas) as constraint:

                def generate(*a: Any, **kw: Any) -> Any:
                    return original(*a, logits_processor=[constraint], **kw)

                model.generate = generate
                try:
                    return super()._generate_single_turn(prompt_ids, *args, **kwargs)
                finally:
                    del model.generate

    return Constrained


def save_adapter(model: Any, tokenizer: Any, path: Path, base_model: str) -> None:
    # the adapter names its base as configured (a GGUF by its absolute path), for finetune.export to merge into
    gguf = base.gguf_file(base_model)
    for config in model.peft_config.values():
        config.base_model_name_or_path = str(gguf or base_model)
    # "auto" would look the GGUF up as a hub repo, to see whether the vocabulary was resized: it never is
    model.save_pretrained(path, save_embedding_layers="auto" if gguf is None else False)
    tokenizer.save_pretrained(path)


def compare_exports(
    agent: data.Agent, out: Path, settings: Settings, data_dir: Path, *, threads: int | None = None
) -> dict[str, Any]:
    """Export the untrained and the trained adapter alike (merge, GGUF, quantise) and score both on the
    validation examples through memr1's inference path (finetune.evaluate): the before/after that counts.
    The first `compare_limit` examples (all when negative); a manager is scored through make_reward's
    frozen Answer Agent, the one it trained against."""
    import hashlib

    from . import evaluate, export

    files: dict[str, str] = {}
    sizes: dict[str, dict[str, Any]] = {}
    for name, adapter in (("base", "adapter-untrained"), ("trained", "adapter")):
        summary = export.export(out / "export" / name, adapter=out / adapter, name=f"{out.name}-{name}", check=False)
        gguf = Path(summary["gguf"])
        files[name] = str(gguf)
        sizes[name] = {"bytes": gguf.stat().st_size, "sha256": hashlib.sha256(gguf.read_bytes()).hexdigest()}
    examples: list[Any] = data.load(data_dir, "val", agent)
    if agent == "answer":
        examples = [e.as_asked(settings.k, settings.distill) for e in examples]
    if settings.compare_limit >= 0:
        examples = examples[: settings.compare_limit]
    reward = make_reward(agent, settings) if agent == "manager" else None
    result = evaluate.compare(files, examples, threads=threads, reward=reward)  # type: ignore[arg-type]
    result |= {"agent": agent, "split": "val", "k": settings.k, "distill": settings.distill, "files": sizes}
    history = [json.loads(line) for line in (out / "log.jsonl").read_text(encoding="utf-8").splitlines() if line]
    f1 = {name: s["f1"] for name, s in result["summary"].items()}
    plot(
        history,
        out / "rewards.png",
        f"{agent} agent, GRPO on {Path(settings.base_model).name}\n"
        f"validation F1 on llama.cpp: {f1['base']:.1f} before, {f1['trained']:.1f} after ({len(examples)} examples)",
    )
    (out / "validation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return result


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m finetune.train", description=__doc__.split("\n\n")[0])
    p.add_argument("agent", choices=data.AGENTS)
    p.add_argument("--data", type=Path, required=True, help="the examples written by python -m finetune.data")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument(
        "--preset",
        default=None,
        metavar="NAME",
        help="apply the config's [preset.NAME] table after the agent's, before --set (e.g. cpu-smollm2)",
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    p.add_argument("--tiny", action="store_true", help="train a random-weight model built locally (smoke run)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="then export the untrained and trained adapters and score both on the validation examples "
        "through memr1 on llama.cpp (validation.json; finetune.evaluate)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {key: _value(value) for key, _, value in (s.partition("=") for s in args.set)}
    if args.tiny:
        overrides = {"base_model": str(args.out / "models" / "tiny-hf")} | overrides
    try:
        settings = load_settings(args.agent, args.config, preset=args.preset, tiny=args.tiny, overrides=overrides)
    except ValueError as e:  # an unknown preset, or a setting that does not validate
        p.error(str(e))
    prepare_backend(settings.use_unsloth)  # before the tiny models are written: they import transformers
    if args.tiny:
        settings = settings.model_copy(update=tiny_models(args.out / "models") | overrides)
    result = run(args.agent, settings, args.data, args.out)
    print(json.dumps(result["validation"], indent=2))
    if args.compare:
        compared = compare_exports(args.agent, args.out, settings, args.data)
        print(json.dumps({"summary": compared["summary"], "differences": compared["differences"]}, indent=2))


def tiny_models(directory: Path) -> dict[str, str]:
    """A random-weight policy, frozen answerer and embedder, all written locally."""
    from memr1.tiny_models import write_chat_model, write_embedding_model

    from .tiny import write_hf_chat_model

    return {
        "base_model": str(write_hf_chat_model(directory / "tiny-hf")),
        "frozen_answerer": str(write_chat_model(directory / "tiny-chat.gguf", seed=0)),
        "embedder": str(write_embedding_model(directory / "tiny-embed.gguf", dim=32, seed=0)),
    }


if __name__ == "__main__":
    main()
