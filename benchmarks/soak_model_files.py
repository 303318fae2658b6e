"""Soak: corrupt, truncated and mislabelled GGUF files, each loaded through memr1 in a process of its own.

    python -m benchmarks.soak_model_files [--flips 150] [--workers 2] [--json]

Variants of the tiny chat and embedding models: truncations, random single-bit flips in the header
(metadata and tensor index), every scalar metadata field set to odd values (0, -1, 99, 2^31-1,
2^32-1), every tensor retyped, reshaped or moved, and each model used in the other's role. Each is
loaded as memr1 would (LlamaEmbedder.embed, or LlamaCpp.complete) in a child process, which is
watched from outside: a memr1 error is a clean refusal; a signal (llama.cpp's abort()), a hang or
any other exception is a failure. Run it against another checkout with PYTHONPATH=<that>/src.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

CHILD = """
import sys
from memr1 import LlamaEmbedder, MemR1Error, prompts
from memr1.llm import LlamaCpp
role, path = sys.argv[1], sys.argv[2]
try:
    if role == "embedder":
        LlamaEmbedder(path).embed(["hello world"])
    else:
        LlamaCpp(path, retries=0).complete([{"role": "user", "content": "hi"}], prompts.ANSWER_SCHEMA,
                                          parse=lambda raw: raw, max_tokens=8)
    print("loaded")
except MemR1Error as e:
    print("refused", type(e).__name__, str(e)[:200].replace(chr(10), " "))
except Exception as e:
    print("foreign", type(e).__name__, str(e)[:200].replace(chr(10), " "))
"""
VALUES = (0, -1, 3, 99, 2**31 - 1, 2**32 - 1)


def _edit(src: Path, dst: Path, change) -> None:
    from gguf import GGUFReader

    shutil.copy(src, dst)
    reader = GGUFReader(str(dst), "r+")
    change(reader)
    reader.data.flush()


def _set_field(name: str, value: int):
    def change(reader) -> None:
        field = reader.fields[name]
        part = field.parts[field.data[0]]
        part[0] = np.array(value).astype(part.dtype)

    return change


def _tensor(index: int, what: str):
    def change(reader) -> None:
        parts = reader.tensors[index].field.parts  # name length, name, n_dims, dims, type, offset
        if what == "F16":
            parts[4][0] = 1
        elif what == "type 99":
            parts[4][0] = 99
        elif what == "dim x2":
            parts[3][0] *= 2
        elif what == "offset +32":
            parts[5][0] += 32
        else:
            parts[2][0] = int(what.split()[-1])

    return change


def variants(kind: str, src: Path, out: Path, flips: int, rng: random.Random) -> list[tuple[str, str, Path]]:
    """(label, role, file) for every corruption of one model."""
    from gguf import GGUFReader, GGUFValueType

    data = src.read_bytes()
    reader = GGUFReader(str(src))
    header_end = min(t.data_offset for t in reader.tensors)
    role = "embedder" if kind == "embed" else "manager"
    made: list[tuple[str, str, Path]] = []

    def add(label: str, blob: bytes | None = None, change=None) -> None:
        path = out / f"{kind}-{len(made)}.gguf"
        if blob is not None:
            path.write_bytes(blob)
        else:
            try:
                _edit(src, path, change)
            except Exception:  # a mutation gguf-py itself cannot write: not a file we can test
                return
        made.append((f"{kind}: {label}", role, path))

    for cut in sorted(
        {
            0,
            1,
            4,
            8,
            16,
            24,
            *(rng.randrange(24, header_end) for _ in range(12)),
            *(rng.randrange(header_end, len(data)) for _ in range(6)),
            len(data) - 1,
        }
    ):
        add(f"truncated at {cut}", data[:cut])
    for _ in range(flips):
        blob = bytearray(data)
        at = rng.randrange(0, header_end)
        blob[at] ^= 1 << rng.randrange(8)
        add("bit flip in the header", bytes(blob))
    for name, field in reader.fields.items():
        if len(field.types) == 1 and field.types[0] not in (GGUFValueType.STRING, GGUFValueType.BOOL):
            for value in VALUES:
                add(f"{name} = {value}", change=_set_field(name, value))
    for i in range(len(reader.tensors)):
        for what in ("F16", "type 99", "dim x2", "offset +32", "n_dims 0", "n_dims 5"):
            add(f"tensor {i}: {what}", change=_tensor(i, what))
    return made


def load(role: str, path: Path, env: dict[str, str], timeout: float) -> tuple[str, str]:
    try:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, role, str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "hung", f"no answer in {timeout:.0f}s"
    if done.returncode < 0:
        return "crashed", f"signal {-done.returncode}: " + next(
            (line for line in done.stderr.splitlines() if "GGML_ASSERT" in line or ".cpp:" in line), ""
        )[-160:]
    words = done.stdout.strip().split(" ", 1)
    if done.returncode != 0 or not words[0]:
        return "crashed", f"exit {done.returncode}: {done.stderr.strip()[-160:]}"
    return words[0], words[1] if len(words) > 1 else ""


def run(
    flips: int = 150, workers: int = 2, timeout: float = 120.0, workdir: Path | None = None, seed: int = 0
) -> dict[str, Any]:
    from memr1.tiny_models import write_chat_model, write_embedding_model

    tmp = Path(workdir or tempfile.mkdtemp(prefix="memr1-gguf-"))
    (tmp / "files").mkdir(parents=True, exist_ok=True)
    chat, embed = write_chat_model(tmp / "chat.gguf", seed=0), write_embedding_model(tmp / "embed.gguf", dim=32)
    rng = random.Random(seed)
    cases = variants("chat", chat, tmp / "files", flips, rng) + variants("embed", embed, tmp / "files", flips // 2, rng)
    cases += [("chat model as the embedder", "embedder", chat), ("embedding model as the manager", "manager", embed)]
    env = {**os.environ, "MEMR1_CACHE_DIR": str(tmp / "cache")}  # no probe verdict carried over from elsewhere
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda case: load(case[1], case[2], env, timeout), cases))
    outcomes = Counter(kind for kind, _ in results)
    bad = [
        {"case": label, "outcome": kind, "detail": detail}
        for (label, _, _), (kind, detail) in zip(cases, results)
        if kind in ("crashed", "hung", "foreign")
    ]
    return {
        "variants": len(cases),
        "seconds": time.perf_counter() - started,
        "outcomes": dict(outcomes),
        "failures": bad,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--flips", type=int, default=150, help="random bit flips in the chat model (half as many in the embedder)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a load counts as hung")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = run(args.flips, args.workers, args.timeout, seed=args.seed)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['variants']} malformed files in {out['seconds']:.0f}s: {out['outcomes']}")
        kinds = Counter(f"{f['outcome']}: {f['detail'][:110]}" for f in out["failures"])
        for detail, n in kinds.most_common(20):
            print(f"  {n:>4}  {detail}")
    sys.exit(1 if out["failures"] else 0)


if __name__ == "__main__":
    main()
