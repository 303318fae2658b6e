"""Fine-tune memr1's embedder on LoCoMo's training conversation: each question to the turns that answer it.

    python -m finetune.embedder --data ../shared/data/locomo10.json \
        --base ../shared/models/all-MiniLM-L6-v2-f16.gguf --out runs/embedder

Training starts from the GGUF file memr1 runs and writes one back (`<out>/<base name>-locomo.gguf`), with the
base's metadata and tokenizer and the same tensor types, so `Memory(embedder=...)` loads it as it loaded the
base. Only BERT-style mean-pooling embedders are supported (all-MiniLM-L6-v2, bge-small).

What is learned (issue 15): the evidence a LoCoMo question needs often shares no word with it, and MiniLM
places it only loosely near the question. Each (question, evidence turn) pair of the training split, and each
sentence of a turn of several (memr1 also scores a turn by its best sentence), is a positive; the negatives
are the other pairs of the batch and turns of the same conversation that the base model ranks high but that
are not evidence (hard negatives). The loss is InfoNCE over cosines, as sentence-transformers'
MultipleNegativesRankingLoss. Validation is `python -m benchmarks.locomo_retrieval --embedder <the file>`.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from memr1 import datasets
from memr1.bench_locomo_retrieval import conversations
from memr1.retrieval import sentences

# llama.cpp's BERT tensors, by the name of the Hugging Face BertModel parameter they hold
EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "token_embd.weight",
    "embeddings.position_embeddings.weight": "position_embd.weight",
    "embeddings.token_type_embeddings.weight": "token_types.weight",
    "embeddings.LayerNorm.weight": "token_embd_norm.weight",
    "embeddings.LayerNorm.bias": "token_embd_norm.bias",
}
LAYER = {
    "attention.self.query": "attn_q",
    "attention.self.key": "attn_k",
    "attention.self.value": "attn_v",
    "attention.output.dense": "attn_output",
    "attention.output.LayerNorm": "attn_output_norm",
    "intermediate.dense": "ffn_up",
    "output.dense": "ffn_down",
    "output.LayerNorm": "layer_output_norm",
}
SPECIAL = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}


@dataclass(frozen=True)
class Settings:
    """The run that was measured (benchmarks/RESULTS.md): chosen on conv-30, the validation conversation."""

    epochs: int = 4
    lr: float = 2e-5
    batch: int = 16
    hard: int = 3  # hard negatives per pair and step, drawn from the `pool` best non-evidence turns
    pool: int = 30
    scale: float = 20.0  # 1 / temperature of the cosines
    weight_decay: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class Pair:
    question: str
    passage: str
    negatives: tuple[str, ...]


def tensor_names(layers: int) -> dict[str, str]:
    names = dict(EMBEDDINGS)
    for i in range(layers):
        for hf, cpp in LAYER.items():
            for part in ("weight", "bias"):
                names[f"encoder.layer.{i}.{hf}.{part}"] = f"blk.{i}.{cpp}.{part}"
    return names


def _wordpiece(tokens: Sequence[str]) -> list[str]:
    """Hugging Face's WordPiece vocabulary from a GGUF's: llama.cpp's converter marks a word's first piece with
    U+2581 ("phantom space") where BERT marks the others with "##"."""
    vocab = []
    for i, token in enumerate(tokens):
        if token in SPECIAL:
            vocab.append(token)
        elif token.startswith("\u2581"):
            vocab.append(token[1:] or f"[phantom{i}]")  # a bare phantom space starts no word
        else:
            vocab.append("##" + token)
    return vocab


def load(gguf: Path) -> tuple[Any, Any]:
    """A GGUF BERT embedder as a Hugging Face BertModel (float32) and the matching tokenizer."""
    import torch
    from gguf import GGUFReader
    from transformers import BertConfig, BertModel, BertTokenizer

    reader = GGUFReader(gguf)

    def field(name: str) -> Any:
        return reader.fields[name].contents()

    arch = field("general.architecture")
    if arch != "bert":
        raise SystemExit(f"{gguf}: a {arch!r} model; only BERT embedders (mean pooling) can be fine-tuned here")
    layers = int(field("bert.block_count"))
    config = BertConfig(
        vocab_size=len(field("tokenizer.ggml.tokens")),
        hidden_size=int(field("bert.embedding_length")),
        num_hidden_layers=layers,
        num_attention_heads=int(field("bert.attention.head_count")),
        intermediate_size=int(field("bert.feed_forward_length")),
        max_position_embeddings=int(field("bert.context_length")),
        type_vocab_size=int(field("tokenizer.ggml.token_type_count")),
        layer_norm_eps=float(field("bert.attention.layer_norm_epsilon")),
        pad_token_id=int(field("tokenizer.ggml.padding_token_id")),
    )
    model = BertModel(config, add_pooling_layer=False)
    tensors = {t.name: t for t in reader.tensors}
    quantized = sorted({t.tensor_type.name for t in reader.tensors} - {"F32", "F16"})
    if quantized:  # their blocks would need dequantizing, and save() could not write them back
        raise SystemExit(f"{gguf}: {', '.join(quantized)} tensors; start from the model's f16 or f32 GGUF")
    state = {
        hf: torch.from_numpy(np.array(tensors[cpp].data, dtype=np.float32)) for hf, cpp in tensor_names(layers).items()
    }
    model.load_state_dict(state, strict=False)  # position_ids is a buffer BertModel makes itself
    vocab = {token: i for i, token in enumerate(_wordpiece(field("tokenizer.ggml.tokens")))}
    return model, BertTokenizer(vocab=vocab, do_lower_case=True)


def encode(model: Any, tokenizer: Any, texts: Sequence[str]) -> Any:
    """Unit vectors, mean-pooled over every token as llama.cpp pools them ([CLS] and [SEP] included)."""
    import torch

    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def embed(model: Any, tokenizer: Any, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    import torch

    model.eval()
    order = np.argsort([len(t) for t in texts])  # like lengths together: less padding
    out = np.zeros((len(texts), model.config.hidden_size), np.float32)
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            idx = order[start : start + batch]
            out[idx] = encode(model, tokenizer, [texts[i] for i in idx]).numpy()
    return out


def pairs(data: list[dict], model: Any, tokenizer: Any, *, split: str = "train", pool: int = 30) -> list[Pair]:
    """The split's (question, evidence) pairs, as `ask` stores turns ("Speaker: text"), each with the `pool`
    turns the base model ranks highest for the question that are not its evidence."""
    found = []
    for conv in conversations(
        data, split=split, ids=None, source="turns", style="speaker", sessions=None, max_questions=None
    ):
        texts = [entry.text for entry in conv.entries]
        where = {dia: i for i, entry in enumerate(conv.entries) for dia in entry.dia_ids}
        split_up = [sentences(t) for t in texts]
        flat = [s for parts in split_up for s in parts]
        owner = np.repeat(np.arange(len(texts)), [len(parts) for parts in split_up])
        turns, said = embed(model, tokenizer, texts), embed(model, tokenizer, flat)
        asked = embed(model, tokenizer, [q.text for q in conv.questions])
        for q, v in zip(conv.questions, asked):
            evidence = {where[e] for e in q.evidence if e in where}
            score = turns @ v
            np.maximum.at(score, owner, said @ v)  # a turn scores as its best sentence, as memr1 ranks it
            negatives = tuple(texts[i] for i in np.argsort(-score) if i not in evidence)[:pool]
            for e in sorted(evidence):
                parts = split_up[e]
                for passage in [texts[e], *(parts if len(parts) > 1 else [])]:
                    found.append(Pair(q.text, passage, negatives))
    return found


def train(model: Any, tokenizer: Any, examples: Sequence[Pair], settings: Settings) -> list[float]:
    """InfoNCE over each batch's passages and hard negatives; a question's other evidence in the batch is
    masked, not taken for a negative. Returns the mean loss of each epoch."""
    import torch

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    losses = []
    for _ in range(settings.epochs):
        model.train()
        order = list(range(len(examples)))
        rng.shuffle(order)
        total, steps = 0.0, 0
        for start in range(0, len(order), settings.batch):
            batch = [examples[i] for i in order[start : start + settings.batch]]
            questions = [p.question for p in batch]
            hard = [neg for p in batch for neg in rng.sample(p.negatives, min(settings.hard, len(p.negatives)))]
            q = encode(model, tokenizer, questions)
            d = encode(model, tokenizer, [p.passage for p in batch] + hard)
            logits = settings.scale * q @ d.T
            n = len(batch)
            same = torch.zeros(logits.shape, dtype=torch.bool)
            same[:, :n] = torch.tensor([[a != b and questions[a] == questions[b] for b in range(n)] for a in range(n)])
            loss = torch.nn.functional.cross_entropy(logits.masked_fill(same, -1e4), torch.arange(n))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
    return losses


def save(model: Any, base: Path, out: Path) -> Path:
    """Write the model as a GGUF with `base`'s metadata, tokenizer and tensor types (f16 stays f16)."""
    from gguf import GGUFReader, GGUFWriter, Keys

    from .export import copy_metadata

    source = GGUFReader(base)
    cpp_of = tensor_names(model.config.num_hidden_layers)
    weights = {cpp_of[name]: p.detach().cpu().numpy() for name, p in model.state_dict().items() if name in cpp_of}
    tmp = out.with_name(out.name + ".tmp")
    writer = GGUFWriter(tmp, source.fields[Keys.General.ARCHITECTURE].contents(), endianess=source.endianess)
    copy_metadata(writer, source)
    data = {}
    for tensor in source.tensors:
        if tensor.name not in weights:
            raise SystemExit(f"{base}: tensor {tensor.name} has no counterpart in a BertModel")
        data[tensor.name] = weights[tensor.name].astype(tensor.data.dtype).reshape(tensor.data.shape)
        array = data[tensor.name]
        writer.add_tensor_info(tensor.name, array.shape, array.dtype, array.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in source.tensors:
        writer.write_tensor_data(data[tensor.name], tensor_endianess=source.endianess)
    writer.close()
    os.replace(tmp, out)
    return out


def check(gguf: Path, model: Any, tokenizer: Any, texts: Sequence[str]) -> float:
    """The lowest cosine between what llama.cpp (through memr1) and the trained model make of `texts`: the
    written file must be the model that was trained."""
    from memr1.embedding import LlamaEmbedder

    cpp = LlamaEmbedder(str(gguf)).embed(list(texts))
    cpp = cpp / np.linalg.norm(cpp, axis=1, keepdims=True)
    lowest = float(np.min(np.sum(cpp * embed(model, tokenizer, texts), axis=1)))
    if lowest < 0.99:
        raise SystemExit(f"{gguf}: llama.cpp's vectors differ from the trained model's (cosine {lowest:.4f})")
    return lowest


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="locomo10.json (default ../shared/data beside a memr1 clone)")
    ap.add_argument("--base", required=True, type=Path, help="the GGUF embedder to start from")
    ap.add_argument("--out", required=True, type=Path, help="folder for <base name>-locomo.gguf")
    ap.add_argument("--split", default="train", choices=("train", "tune"), help="tune = train + val")
    ap.add_argument("--epochs", type=int, default=Settings.epochs)
    ap.add_argument("--lr", type=float, default=Settings.lr)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(min(8, os.cpu_count() or 1))
    data = datasets.load_locomo(datasets.ensure_locomo(args.data))
    model, tokenizer = load(args.base)
    probe = ["Caroline: I went to a LGBTQ support group yesterday.", "What did Melanie paint?"]
    print(f"base: llama.cpp and the loaded model agree to cosine {check(args.base, model, tokenizer, probe):.6f}")
    examples = pairs(data, model, tokenizer, split=args.split, pool=Settings.pool)
    print(f"{len(examples)} pairs from the {args.split} split")
    losses = train(model, tokenizer, examples, Settings(epochs=args.epochs, lr=args.lr))
    print("loss by epoch: " + ", ".join(f"{x:.3f}" for x in losses))
    args.out.mkdir(parents=True, exist_ok=True)
    out = save(model, args.base, args.out / f"{args.base.stem}-locomo.gguf")
    print(f"wrote {out}; llama.cpp agrees to cosine {check(out, model, tokenizer, probe):.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
