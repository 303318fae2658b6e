"""Training samples what inference can write: memr1's grammar, in llama.cpp's engine, masks each step (issue 14).

Real vocabulary (SmolLM2's GGUF from ../shared, skipped without it); the logits are random, so the
grammar alone decides that what comes out is JSON that memr1's parsers accept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from finetune.constrained import GrammarConstraint, Vocabulary  # noqa: E402

from memr1 import prompts, scoring  # noqa: E402

from .conftest import SMOLLM2, needs_smollm2  # noqa: E402


@pytest.fixture(scope="module")
def vocabulary():
    v = Vocabulary(SMOLLM2)
    yield v
    v.close()


def sample(vocabulary: Vocabulary, schemas, *, seed: int, steps: int = 400) -> list[list[int]]:
    """Draw tokens from random logits under the constraint, as generate does: the processor sees the tokens so far."""
    gen = torch.Generator().manual_seed(seed)
    rows = len(schemas)
    ids = torch.zeros((rows, 1), dtype=torch.long)
    done = [False] * rows
    with GrammarConstraint(vocabulary, schemas) as constraint:
        for _ in range(steps):
            scores = constraint(ids, torch.randn((rows, vocabulary.size), generator=gen) * 3)
            token = torch.multinomial(torch.softmax(scores, -1), 1, generator=gen)
            for row in range(rows):
                if done[row]:
                    token[row] = 0
                elif vocabulary.is_end(int(token[row])):
                    done[row] = True
            ids = torch.cat([ids, token], dim=1)
            if all(done):
                break
    assert all(done), "the grammar never let a row end"
    return [[t for t in row[1:].tolist() if not vocabulary.is_end(t)] for row in ids]


def text(vocabulary: Vocabulary, tokens: list[int]) -> str:
    return vocabulary._llama.detokenize(tokens).decode("utf-8", errors="replace")


@needs_smollm2
def test_random_logits_under_the_grammar_write_what_the_parsers_accept(vocabulary):
    shown = prompts.shown_memories([(10, "Andrew adopted Buddy.", None), (11, "Andrew likes hiking.", None)])
    cases = [
        (prompts.DIRECT_ANSWER_SCHEMA, lambda raw: prompts.parse_direct_answer(raw, shown, [10, 11])),
        (prompts.answer_schema(len(shown)), lambda raw: prompts.parse_answer(raw, shown, [10, 11])),
    ]
    for seed in range(3):
        rows = sample(vocabulary, [schema for schema, _ in cases], seed=seed)
        for tokens, (_, parse) in zip(rows, cases, strict=True):
            raw = text(vocabulary, tokens)
            json.loads(raw, strict=False)  # JSON, not prose or a fenced block
            parse(raw)  # and the agent's parser takes it


@needs_smollm2
def test_the_manager_grammar_names_only_the_ids_shown(vocabulary):
    schema = prompts.manager_schema([0, 1])
    for tokens in sample(vocabulary, [schema] * 4, seed=7):
        out = json.loads(text(vocabulary, tokens), strict=False)
        assert {f.get("id") for f in out["facts"]} <= {None, 0, 1}


@needs_smollm2
def test_rows_that_ended_are_left_alone(vocabulary):
    """transformers pads a finished row; the constraint must not feed its pad to llama.cpp (it would abort)."""
    with GrammarConstraint(vocabulary, [prompts.DIRECT_ANSWER_SCHEMA]) as constraint:
        end = next(t for t in range(vocabulary.size) if vocabulary.is_end(t))
        constraint(torch.zeros((1, 1), dtype=torch.long), torch.zeros((1, vocabulary.size)))
        ids = torch.tensor([[0, end]])
        scores = constraint(ids, torch.zeros((1, vocabulary.size)))  # the row ended: nothing is masked
        assert torch.isfinite(scores).all()
        scores = constraint(torch.tensor([[0, end, 0]]), torch.zeros((1, vocabulary.size)))
        assert torch.isfinite(scores).all()


@needs_smollm2
def test_one_grammar_per_row_is_required(vocabulary):
    with GrammarConstraint(vocabulary, [prompts.DIRECT_ANSWER_SCHEMA]) as constraint:
        with pytest.raises(ValueError, match="2 rows"):
            constraint(torch.zeros((2, 1), dtype=torch.long), torch.zeros((2, vocabulary.size)))


def test_torch_log_probs_match_trls_kernel():
    """finetune.cpu replaces TRL's Triton kernel off CUDA; the kernel itself runs in Triton's interpreter here."""
    pytest.importorskip("triton")
    script = """
import torch
from trl.kernels import ChunkedLogProbFunction
from finetune.cpu import TorchLogProbs
torch.manual_seed(0)
hidden = torch.randn(9, 16, requires_grad=True)
weight = torch.randn(300, 16, requires_grad=True)
targets = torch.randint(0, 300, (9,))
outputs = ("log_probs", "entropy")
worst = 0.0
for temperature in (1.0, 0.7):
    a = ChunkedLogProbFunction.apply(hidden, weight, None, targets, temperature, 128, None, 1.0, outputs)
    b = TorchLogProbs.apply(hidden, weight, None, targets, temperature, 128, None, 1.0, outputs)
    worst = max(worst, *((x - y).abs().max().item() for x, y in zip(a[:2], b[:2])))
    ga = torch.autograd.grad(a[0].sum() + a[1].sum(), (hidden, weight))
    gb = torch.autograd.grad(b[0].sum() + b[1].sum(), (hidden, weight))
    worst = max(worst, *((x - y).abs().max().item() for x, y in zip(ga, gb)))
print(worst)
"""
    env = os.environ | {"TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) < 1e-3


def test_paired_bootstrap_interval():
    assert scoring.paired_difference([0.5] * 10, [0.5] * 10) == (0.0, 0.0, 0.0)
    mean, low, high = scoring.paired_difference([1.0, 0.0] * 20, [0.0] * 40)
    assert mean == 0.5 and 0.3 < low < 0.5 < high < 0.7
    with pytest.raises(ValueError):
        scoring.paired_difference([1.0], [])
