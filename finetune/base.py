"""The base model that training starts from and export merges into: a hub id, a Hugging Face folder, or a GGUF file.

A GGUF file is what memr1 runs, so training can start from exactly the model that the benchmark scores.
transformers reads it and dequantises every weight into an ordinary dense model (float32 unless told
otherwise), tokenizer and chat template included. Two things are done here on top of that:

- `name_or_path` is set to the file, so that peft records the file, not its folder, as the adapter's
  `base_model_name_or_path`, and `finetune.export` finds the same base again from the adapter alone;
- the tokenizer's bos, eos and pad tokens are taken from the file's own `tokenizer.ggml.*_token_id`.
  transformers 5.17 takes eos from the bos id for GPT-2-style vocabularies, which would make generation
  stop at `<|im_start|>` instead of `<|im_end|>`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "pad_token": "padding_token_id"}


def gguf_file(ref: str | os.PathLike[str]) -> Path | None:
    """The GGUF file that `ref` names (absolute), or None for a hub id or a Hugging Face folder."""
    path = Path(ref)
    if path.suffix.lower() != ".gguf":
        return None
    if not path.is_file():
        raise SystemExit(f"base model {ref}: no such GGUF file")
    return path.resolve()


def load_base(
    ref: str | os.PathLike[str], *, dtype: Any = "auto", tokenizer: bool = True, **kwargs: Any
) -> tuple[Any, Any | None]:
    """(model, tokenizer) of a hub id, a Hugging Face folder or a GGUF file; tokenizer is None when not asked for.

    `dtype` and `kwargs` go to `AutoModelForCausalLM.from_pretrained`. A GGUF is dequantised in full
    (`GgufConfig(dequantize=True)`), so that no GGUF quantizer stays attached to the model: transformers
    would refuse to train or to save it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf_file(ref)
    if path is None:
        model = AutoModelForCausalLM.from_pretrained(ref, dtype=dtype, **kwargs)
        return model, AutoTokenizer.from_pretrained(ref) if tokenizer else None

    from transformers import GgufConfig

    where = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    model = AutoModelForCausalLM.from_pretrained(
        **where, dtype=dtype, quantization_config=GgufConfig(dequantize=True), **kwargs
    )
    if getattr(model, "hf_quantizer", None) is not None:  # pragma: no cover - transformers kept packed weights
        raise SystemExit(f"{path}: transformers did not dequantise every weight; convert it to a Hugging Face folder")
    model.name_or_path = model.config.name_or_path = str(path)
    if not tokenizer:
        return model, None
    tok = AutoTokenizer.from_pretrained(**where)
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    for attribute, key in SPECIAL_TOKENS.items():
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None:
            setattr(tok, attribute, tok.convert_ids_to_tokens(int(field.contents())))
    return model, tok
