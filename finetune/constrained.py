"""Grammar-constrained generation for training: the policy samples only what memr1's grammar lets it write.

At inference memr1 asks llama.cpp for JSON under a grammar built from each call's schema
(`memr1.llm.json_grammar`), so a reply that is not that JSON cannot happen. Unconstrained, a small
model writes prose during training, every completion scores 0, and GRPO has nothing to learn from
(measured with SmolLM2-135M: 0 of 8 completions parsed). So training samples under the same grammar,
with the same engine: llama.cpp's grammar sampler, over the vocabulary of a GGUF with the policy's
tokens, masks each step's logits in a transformers `LogitsProcessor`.

The policy's log-probabilities in the GRPO loss stay those of the unconstrained model; the group's
rewards then push probability towards the grammatical replies that score well.
"""

from __future__ import annotations

import ctypes
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from memr1.llm import json_grammar


class Vocabulary:
    """A GGUF's vocabulary in llama.cpp (no weights are loaded), to build grammar samplers on."""

    def __init__(self, gguf: str | os.PathLike[str]) -> None:
        from llama_cpp import Llama

        self.path = Path(gguf)
        self._llama = Llama(str(self.path), vocab_only=True, verbose=False)
        import llama_cpp

        self._lib = llama_cpp
        self.vocab = llama_cpp.llama_model_get_vocab(self._llama._model.model)
        self.size = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self._grammars: dict[str, bytes] = {}
        # one candidate array, reused: llama.cpp's grammar sets the logit of each token it rejects to -inf
        self._data = (llama_cpp.llama_token_data * self.size)()
        self._view = np.frombuffer(self._data, dtype=np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]))
        self._ids = np.arange(self.size, dtype=np.int32)

    def sampler(self, schema: dict[str, Any]) -> Any:
        """A fresh grammar sampler for one reply to `schema` (freed with `free`)."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = json_grammar(schema).encode()
        sampler = self._lib.llama_sampler_init_grammar(self.vocab, self._grammars[key], b"root")
        if not sampler:
            raise ValueError(f"llama.cpp could not parse the grammar of {key[:200]}")
        return sampler

    def allowed(self, sampler: Any) -> np.ndarray:
        """A boolean mask over the vocabulary: the tokens the grammar accepts next."""
        self._view["id"] = self._ids
        self._view["logit"] = 0.0
        candidates = self._lib.llama_token_data_array(data=self._data, size=self.size, selected=-1, sorted=False)
        self._lib.llama_sampler_apply(sampler, ctypes.byref(candidates))
        if candidates.size != self.size or ctypes.addressof(candidates.data.contents) != ctypes.addressof(self._data):
            raise RuntimeError("llama.cpp's grammar sampler resized the candidates")  # pragma: no cover
        return np.isfinite(self._view["logit"])

    def accept(self, sampler: Any, token: int) -> None:
        self._lib.llama_sampler_accept(sampler, token)

    def is_end(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    def free(self, sampler: Any) -> None:
        self._lib.llama_sampler_free(sampler)

    def close(self) -> None:
        """Free the vocabulary now: llama-cpp-python's finaliser fails when it runs at interpreter exit."""
        self._llama.close()


class GrammarConstraint:
    """A transformers logits processor for one `generate` call: row i follows the grammar of `schemas[i]`.

    Rows past their end (an end-of-generation token) are left alone: transformers pads them.
    A token the grammar did not allow is never accepted (llama.cpp would abort), so a row that
    somehow gets one (only by a processor running after this one) is treated as ended.
    """

    def __init__(self, vocabulary: Vocabulary, schemas: Sequence[dict[str, Any]]) -> None:
        self.vocabulary = vocabulary
        self.samplers = [vocabulary.sampler(s) for s in schemas]
        self.masks: list[np.ndarray | None] = [None] * len(schemas)
        self.ended = [False] * len(schemas)
        self.start: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        rows, width = scores.shape
        if rows != len(self.samplers):
            raise ValueError(f"{rows} rows to generate, {len(self.samplers)} grammars")
        if self.start is None:
            self.start = input_ids.shape[1]
        elif input_ids.shape[1] > self.start:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                if self.ended[row]:
                    continue
                mask = self.masks[row]
                if mask is None or token >= len(mask) or not mask[token] or self.vocabulary.is_end(token):
                    self.ended[row] = True
                else:
                    self.vocabulary.accept(self.samplers[row], token)
        blocked = torch.zeros((rows, width), dtype=torch.bool)
        for row in range(rows):
            if self.ended[row]:
                self.masks[row] = None
                continue
            mask = self.vocabulary.allowed(self.samplers[row])
            self.masks[row] = mask
            row_blocked = np.ones(width, dtype=bool)
            row_blocked[: min(width, mask.size)] = ~mask[:width]
            blocked[row] = torch.from_numpy(row_blocked)
        return scores.masked_fill(blocked.to(scores.device), float("-inf"))

    def close(self) -> None:
        for sampler in self.samplers:
            self.vocabulary.free(sampler)
        self.samplers = []

    def __enter__(self) -> GrammarConstraint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def vocabulary_file(base_model: str, workdir: Path) -> Path:
    """A GGUF holding the base model's vocabulary: the base itself when it is a GGUF, else written once
    from the model's tokenizer by llama.cpp's converter (--vocab-only), so the ids are the policy's."""
    from . import base, export

    gguf = base.gguf_file(base_model)
    if gguf is not None:
        return gguf
    out = workdir / "vocabulary.gguf"
    if out.exists():
        return out
    folder = Path(base_model)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(base_model, allow_patterns=["*.json", "*.model", "*.txt", "*.tiktoken"]))
    workdir.mkdir(parents=True, exist_ok=True)
    return export.convert(folder, out, vocab_only=True)
