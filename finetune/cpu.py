"""TRL's GRPO log-probabilities in plain PyTorch, for machines without CUDA.

TRL computes the policy's per-token log-probabilities with a fused Triton kernel. Without CUDA,
Triton's interpreter runs that kernel one token at a time in Python: measured on SmolLM2-135M with
2 cores, it made a GRPO step take about 250 s, nearly all of it in the interpreter. Only the
completion tokens are scored (a few hundred rows of the vocabulary's logits), so the plain
computation fits in memory and autograd differentiates it; TRL's fused head then calls this instead.
"""

from __future__ import annotations

from typing import Any


class TorchLogProbs:
    """Same arguments and outputs as trl.kernels.ChunkedLogProbFunction.apply, without Triton."""

    @staticmethod
    def apply(
        hidden: Any,
        weight: Any,
        bias: Any,
        targets: Any,
        temperature: float,
        chunk_size: int,
        softcap: float | None,
        logit_scale: float,
        outputs: tuple[str, ...],
    ) -> tuple[Any, Any, Any, Any, Any]:
        import torch

        logits = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        logits = logits / temperature
        log_z = torch.logsumexp(logits, dim=-1)
        target = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        log_probs = target - log_z
        entropy = log_sum_sq = mean = top1 = None
        if "entropy" in outputs:
            probs = torch.softmax(logits, dim=-1)
            entropy = log_z - (probs * logits).sum(-1)
        if "log_sum_sq_probs" in outputs:
            log_sum_sq = torch.logsumexp(2 * (logits - log_z.unsqueeze(-1)), dim=-1)
        if "mean_logits" in outputs:
            mean = logits.mean(-1)
        if "is_top1" in outputs:
            top1 = logits.argmax(-1) == targets
        return log_probs, entropy, log_sum_sq, mean, top1


def use_torch_log_probs() -> None:
    """Make TRL's fused LM head compute in PyTorch (call before the trainer's first forward pass)."""
    from trl.trainer import utils

    utils._ChunkedLogProbFunction = TorchLogProbs  # type: ignore[attr-defined]
