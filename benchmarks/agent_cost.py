"""Cost per observed turn and per question: LLM calls, tokens, SDK overhead, and KV-prefix reuse.

    python -m benchmarks.agent_cost [--model CHAT.gguf] [--embedder EMB.gguf] [--memories 10000] [--turns 40]

The bank is pre-filled with `--memories` memories for one user (through the store, so
history, vec0 and FTS5 are real), then `--turns` turns are observed and `--turns` questions
asked. "SDK overhead" is wall time minus time inside the chat model and the embedder:
retrieval, prompt building, parsing and the SQLite transaction. Without --model a tiny
random-weight chat model is generated: its byte-level tokenizer makes token counts about
3-4x those of a real BPE tokenizer, so characters are reported as well (≈4 per token for
English text in Qwen2.5's tokenizer).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from memr1 import LlamaEmbedder, Memory
from memr1.llm import LlamaCpp
from memr1.store import Change
from memr1.tiny_models import write_chat_model, write_embedding_model

TOPICS = "dog hiking painting guitar nurse Paris sister birthday camping pottery marathon book".split()


class TimedEmbedder:
    """Counts the seconds spent embedding, so it can be kept out of the SDK overhead."""

    def __init__(self, inner: LlamaEmbedder):
        self.inner, self.seconds = inner, 0.0
        self.identity, self.dim = inner.identity, inner.dim

    def embed(self, texts):
        start = time.perf_counter()
        try:
            return self.inner.embed(texts)
        finally:
            self.seconds += time.perf_counter() - start


class FreshPrompt(LlamaCpp):
    """The baseline: llama.cpp forgets its cached prefix, so every call evaluates the whole prompt."""

    def generate(self, request):
        llm, lock = self._llama()
        with lock:
            llm.reset()
        return super().generate(request)


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run(args: argparse.Namespace, model: Path, embedder: Path, reuse: bool, tmp: Path) -> dict[str, float]:
    emb = TimedEmbedder(LlamaEmbedder(embedder))
    backend = LlamaCpp if reuse else FreshPrompt
    manager = backend(model, slot=f"manager-{reuse}", n_threads=args.threads)
    answerer = backend(model, slot=f"answerer-{reuse}", n_threads=args.threads)
    mem = Memory(tmp / f"cost-{reuse}.db", embedder=emb, manager=manager, answerer=answerer)
    rng = np.random.default_rng(0)
    texts = [
        f"Andrew mentioned {rng.choice(TOPICS)} and {rng.choice(TOPICS)} (note {i})." for i in range(args.memories)
    ]
    vectors = emb.inner.embed(texts) if args.memories else np.zeros((0, emb.dim), np.float32)
    for start in range(0, args.memories, 2000):
        mem.store.apply(
            [
                Change("ADD", "andrew", text=t, vector=v.tobytes(), at_ts=0.0)
                for t, v in zip(texts[start : start + 2000], vectors[start : start + 2000])
            ],
            actor="bench",
        )
    mem.search("warm up the index", user="andrew")

    def measure(fn) -> tuple[list[float], list[float], list[int], list[int], list[int], list[float]]:
        wall, overhead, calls, ptok, ctok, llm_s = [], [], [], [], [], []
        for i in range(args.turns):
            before, emb_before = dict(mem.usage), emb.seconds
            t = time.perf_counter()
            fn(i)
            elapsed = time.perf_counter() - t
            llm = mem.usage["llm_seconds"] - before["llm_seconds"]
            wall.append(elapsed)
            overhead.append(elapsed - llm - (emb.seconds - emb_before))
            calls.append(mem.usage["llm_calls"] - before["llm_calls"])
            ptok.append(mem.usage["prompt_tokens"] - before["prompt_tokens"])
            ctok.append(mem.usage["completion_tokens"] - before["completion_tokens"])
            llm_s.append(llm)
        return wall, overhead, calls, ptok, ctok, llm_s

    observe = measure(
        lambda i: mem.observe(
            f"I went {TOPICS[i % len(TOPICS)]} with my sister today, turn {i}.",
            speaker="Andrew",
            at="2023-05-08T13:56",
            user="andrew",
        )
    )
    ask = measure(lambda i: mem.ask(f"What does Andrew say about {TOPICS[i % len(TOPICS)]}?", user="andrew"))
    from memr1 import prompts

    hits = mem.search("What does Andrew say about dog?", 60, user="andrew")
    shown = prompts.shown_memories([(h.memory.id, h.memory.text, h.memory.at) for h in hits])
    chars = sum(len(m["content"]) for m in prompts.answer_messages("What does Andrew say about dog?", memories=shown))
    mem.close()
    out = {"prompt_chars_per_question": chars}
    for name, (wall, overhead, calls, ptok, ctok, llm_s) in (("observe", observe), ("ask", ask)):
        out |= {
            f"{name}_calls": statistics.mean(calls),
            f"{name}_prompt_tokens": statistics.mean(ptok),
            f"{name}_completion_tokens": statistics.mean(ctok),
            f"{name}_overhead_p50_ms": p(overhead, 50) * 1000,
            f"{name}_overhead_p95_ms": p(overhead, 95) * 1000,
            f"{name}_llm_p50_ms": p(llm_s, 50) * 1000,
            f"{name}_wall_p50_ms": p(wall, 50) * 1000,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="chat GGUF for both agents (default: a tiny random-weight model)")
    ap.add_argument("--embedder", help="embedding GGUF (default: a tiny random-weight model)")
    ap.add_argument("--memories", type=int, default=10_000)
    ap.add_argument("--turns", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = Path(args.model) if args.model else write_chat_model(tmp / "tiny-chat.gguf")
        embedder = Path(args.embedder) if args.embedder else write_embedding_model(tmp / "tiny-embed.gguf", dim=384)
        on = run(args, model, embedder, True, tmp)
        off = run(args, model, embedder, False, tmp)
    print(
        f"\nmodel: {model.name if args.model else 'tiny random-weight chat model (byte-level tokenizer)'}; "
        f"embedder: {embedder.name if args.embedder else 'tiny random 384-d'}; {args.memories:,} memories; "
        f"{args.turns} turns and {args.turns} questions per setting\n"
    )
    print(
        "| per | LLM calls | prompt tokens | completion tokens | SDK overhead p50 / p95 ms | LLM p50 ms, prefix reuse on | LLM p50 ms, off | reuse speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, label in (("observe", "observed turn"), ("ask", "question")):
        print(
            f"| {label} | {on[f'{name}_calls']:.2f} | {on[f'{name}_prompt_tokens']:.0f} | {on[f'{name}_completion_tokens']:.0f} "
            f"| {on[f'{name}_overhead_p50_ms']:.1f} / {on[f'{name}_overhead_p95_ms']:.1f} | {on[f'{name}_llm_p50_ms']:.1f} "
            f"| {off[f'{name}_llm_p50_ms']:.1f} | {off[f'{name}_llm_p50_ms'] / on[f'{name}_llm_p50_ms']:.2f}× |"
        )
    print(
        f"\nanswer prompt for 60 memories: {on['prompt_chars_per_question']:,} characters "
        f"(≈{on['prompt_chars_per_question'] / 4:.0f} tokens at 4 characters per token)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
