"""A tiny random-weight Hugging Face chat model, built locally, for smoke runs of training and export.

Nothing comes from the hub. The tokenizer is llama-style BPE with byte fallback, so any text
(and any JSON) is representable, and llama.cpp's own converter reads it without the BPE
pre-tokenizer hash check that a home-made GPT-2-style vocabulary would fail. The chat template
is ChatML, as memr1's default models use.

As in `memr1.tiny_models`, residual channel 0 is held constant so that column 0 of the output
head acts as a per-token logit bias: closing quotes and `<|im_end|>` become likely enough that
grammar-constrained JSON ends within a few dozen tokens once exported. The answers are nonsense.
"""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np

SPECIALS = ["<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_SPACE = "\u2581"  # sentencepiece's word-boundary mark, as llama tokenizers write a space


def build_tokenizer():
    """A PreTrainedTokenizerFast: <unk> <s> </s>, 256 byte tokens, printable ASCII, and the ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for piece in [_SPACE, *string.ascii_letters, *string.digits, *string.punctuation]:
        vocab.setdefault(piece, len(vocab))
    merges = [(_SPACE, "t"), ("h", "e"), (_SPACE + "t", "he"), ("i", "n"), ("e", "r"), ("a", "n"), ('"', ":")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend(_SPACE), normalizers.Replace(" ", _SPACE)])
    tok.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        pad_token="</s>",
        chat_template=CHATML,
    )


def _logit_bias(tokenizer, rng: np.random.Generator) -> np.ndarray:
    vocab = tokenizer.get_vocab()
    bias = rng.normal(0.0, 0.5, len(vocab))
    for piece, i in vocab.items():
        text = piece.replace(_SPACE, " ")
        if len(text) == 1 and text.isascii() and (text.isalnum() or text == " "):
            bias[i] += 1.0
        elif piece.startswith("<0x"):
            bias[i] -= 4.0 if int(piece[3:5], 16) < 0x20 else 2.0  # control characters, and bytes of non-ASCII
    bias[vocab['"']] += 4.5
    bias[vocab["<|im_end|>"]] += 4.0
    bias[[vocab[t] for t in ("<unk>", "<s>", "</s>", "<|im_start|>")]] -= 8.0
    return bias


def write_hf_chat_model(directory: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2) -> Path:
    """Save a tiny LlamaForCausalLM and its tokenizer to `directory` (a few hundred kB)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tokenizer = build_tokenizer()
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=im_end,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    rng = np.random.default_rng(seed)
    with torch.no_grad():  # the same scales as memr1.tiny_models, so that the bias channel dominates as it does there
        model.model.embed_tokens.weight.normal_(0.0, 1.0)
        model.model.embed_tokens.weight[:, 0] = 1.0
        model.lm_head.weight.normal_(0.0, 1.5 / hidden**0.5)
        model.lm_head.weight[:, 0] = torch.tensor(_logit_bias(tokenizer, rng), dtype=torch.float32)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0  # keep the bias channel constant through the residual stream
            layer.mlp.down_proj.weight[0] = 0.0
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=im_end, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
