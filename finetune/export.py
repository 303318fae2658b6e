"""Export a trained agent to GGUF, offline, and check it through memr1.

    python -m finetune.export --adapter runs/ft-answer/adapter --out runs/export/answer
    python -m finetune.export --adapter runs/ft-manager/adapter --base Qwen/Qwen2.5-3B-Instruct --quant q5_k_m ...
    python -m finetune.export --model merged-hf-dir --out ... --push-to-hub you/memr1-answer-3b

Steps, none of which clones or downloads anything:
1. merge the LoRA adapter into its base model (peft) and save a Hugging Face folder: out/hf/.
   The base is the one the adapter records, or --base: a hub id, a Hugging Face folder or a GGUF file;
2. convert it to GGUF f16 with llama.cpp's own converter, convert_hf_to_gguf.py: out/<name>-f16.gguf.
   The converter and its gguf-py are vendored, unchanged, under finetune/vendor/llama.cpp (MIT), from
   the llama-cpp-python sdist that memr1 pins; they cover the Llama, Mistral and Qwen 2/2.5/3 families.
   For other architectures pass --llama-cpp with a llama.cpp checkout or an unpacked sdist's vendor/llama.cpp.
   When the base is a GGUF file, the f16 file then takes the base file's llama.cpp vocabulary (its
   tokenizer.ggml.* keys): the tokenizer that transformers rebuilds from a GGUF does not convert back;
3. quantise it with llama.cpp's quantiser, through llama-cpp-python: out/<name>-<quant>.gguf;
4. load the quantised file through memr1 as both agents, and run one observe and one ask.
With --push-to-hub REPO, the quantised file is then uploaded with huggingface-hub.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("finetune.export")
VENDORED = Path(__file__).with_name("vendor") / "llama.cpp"
CONVERTER = "convert_hf_to_gguf.py"


def adapter_base(adapter: Path) -> str:
    """The base model the adapter records: a hub id, a Hugging Face folder, or a GGUF file (finetune.train)."""
    from peft import PeftConfig

    return PeftConfig.from_pretrained(adapter).base_model_name_or_path


def merge(adapter: Path, out: Path, *, base: str | None = None) -> Path:
    """Merge a LoRA adapter into its base model; save the model and the adapter's tokenizer to `out`."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    from .base import load_base

    base = base or adapter_base(adapter)
    # a 4-bit training base (Unsloth's bnb checkpoints) cannot be merged into: pass the 16-bit model as --base
    model, _ = load_base(base, dtype="auto", tokenizer=False, low_cpu_mem_usage=True)
    if model.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise SystemExit(f"{base} loads as {model.dtype}; pass its 16-bit original with --base")
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(out)  # carries the chat template the agent learned with
    return out


def convert(
    hf_dir: Path, outfile: Path, *, outtype: str = "f16", llama_cpp: Path = VENDORED, vocab_only: bool = False
) -> Path:
    """Run llama.cpp's convert_hf_to_gguf.py in a subprocess: it imports its own gguf-py, not the installed gguf."""
    script = llama_cpp / CONVERTER
    if not script.exists():
        raise SystemExit(f"no {CONVERTER} in {llama_cpp}")
    cmd = [sys.executable, str(script), str(hf_dir), "--outfile", str(outfile), "--outtype", outtype]
    cmd += ["--vocab-only"] if vocab_only else []
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        hint = ""
        if "No module named 'conversion." in done.stderr:
            hint = (
                "\nThis architecture's converter module is not vendored here: pass --llama-cpp with a llama.cpp "
                "checkout, or with vendor/llama.cpp of an unpacked llama-cpp-python sdist."
            )
        raise SystemExit(f"{CONVERTER} failed ({done.returncode}):\n{tail}{hint}")
    return outfile


def copy_metadata(writer: Any, reader: Any, keep: Any = lambda name: True) -> None:
    """Copy a GGUF's key-value fields that `keep` accepts into `writer`: all but the architecture, which the
    writer was made with, and the GGUF.* fields, which it writes itself."""
    from gguf import GGUFValueType, Keys

    for field in reader.fields.values():
        if field.name == Keys.General.ARCHITECTURE or field.name.startswith("GGUF.") or not keep(field.name):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)


def take_vocabulary(gguf: Path, base: Path) -> Path:
    """Rewrite `gguf` with the tokenizer.ggml.* keys of `base`, a GGUF file with the same tokens.

    transformers rebuilds a GGUF's tokenizer only approximately (SmolLM2's comes back as a byte-fallback BPE
    that the converter writes as a sentencepiece vocabulary, which llama.cpp cannot load). The merged model
    has the base's tokens, so the base file's own vocabulary is the right one. The chat template stays the
    adapter's. Uses the installed gguf package, as transformers does to read GGUF files.
    """
    from gguf import GGUFReader, GGUFWriter, Keys

    source, donor = GGUFReader(gguf), GGUFReader(base)
    prefix = "tokenizer.ggml."
    if source.fields[Keys.Tokenizer.LIST].contents() != donor.fields[Keys.Tokenizer.LIST].contents():
        raise SystemExit(f"{gguf}: its tokens differ from those of its base {base}, whose vocabulary it would take")
    tmp = gguf.with_name(gguf.name + ".tmp")
    writer = GGUFWriter(tmp, source.fields[Keys.General.ARCHITECTURE].contents(), endianess=source.endianess)
    copy_metadata(writer, source, keep=lambda name: not name.startswith(prefix))
    copy_metadata(writer, donor, keep=lambda name: name.startswith(prefix))
    for tensor in source.tensors:
        writer.add_tensor_info(
            tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in source.tensors:
        writer.write_tensor_data(tensor.data, tensor_endianess=source.endianess)
    writer.close()
    os.replace(tmp, gguf)
    return gguf


def quantize(source: Path, outfile: Path, quant: str = "q4_k_m", *, threads: int | None = None) -> Path:
    """llama.cpp's quantiser (llama_model_quantize), as llama-cpp-python exposes it."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if ftype is None:
        raise SystemExit(f"unknown quantisation {quant!r} (e.g. q4_k_m, q5_k_m, q6_k, q8_0)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(outfile).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"quantising {source} to {quant} failed")
    return outfile


def verify(gguf: Path, *, embedder: str | None = None) -> dict[str, Any]:
    """Load the file through memr1 as both agents; one observe and one ask must go through the model."""
    from memr1 import Memory

    with tempfile.TemporaryDirectory(prefix="memr1-export-") as tmp:
        with Memory(Path(tmp) / "bank.db", embedder=embedder, manager=gguf, answerer=gguf) as mem:
            start = time.perf_counter()
            ops = mem.observe("I adopted a dog named Buddy.", speaker="Andrew", at="2023-05-08T13:56")
            mem.add("Andrew adopted a dog named Buddy.", at="2023-05-08")  # so that ask has memories to show
            answer = mem.ask("What is the name of Andrew's dog?")
            if mem.usage["llm_calls"] < 2:
                raise SystemExit(f"{gguf}: observe and ask made {mem.usage['llm_calls']} model calls, expected 2")
            return {
                "operations": [op.model_dump() for op in ops],
                "answer": answer.text,
                "llm_calls": mem.usage["llm_calls"],
                "seconds": time.perf_counter() - start,
            }


def push(files: Sequence[Path], repo: str, *, private: bool = False) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo, private=private, exist_ok=True)
    for path in files:
        api.upload_file(path_or_fileobj=path, path_in_repo=path.name, repo_id=repo)
    return str(url)


def export(
    out: Path,
    *,
    adapter: Path | None = None,
    model: Path | None = None,
    base: str | None = None,
    quant: str = "q4_k_m",
    name: str | None = None,
    llama_cpp: Path = VENDORED,
    embedder: str | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Merge (if an adapter is given), convert, quantise and verify; returns a summary with the file sizes."""
    if (adapter is None) == (model is None):
        raise SystemExit("pass exactly one of --adapter and --model")
    from .base import gguf_file

    out.mkdir(parents=True, exist_ok=True)
    if adapter is not None:
        base = base or adapter_base(adapter)
    hf_dir = merge(adapter, out / "hf", base=base) if adapter is not None else model
    assert hf_dir is not None
    name = name or (adapter.parent.name if adapter is not None else hf_dir.name)
    started = time.perf_counter()
    f16 = convert(hf_dir, out / f"{name}-f16.gguf", llama_cpp=llama_cpp)
    if adapter is not None and (base_gguf := gguf_file(base)) is not None:
        take_vocabulary(f16, base_gguf)
    converted = time.perf_counter()
    quantized = quantize(f16, out / f"{name}-{quant}.gguf", quant)
    summary: dict[str, Any] = {
        "hf": str(hf_dir),
        "f16": str(f16),
        "f16_bytes": f16.stat().st_size,
        "gguf": str(quantized),
        "gguf_bytes": quantized.stat().st_size,
        "convert_seconds": converted - started,
        "quantize_seconds": time.perf_counter() - converted,
    }
    if check:
        summary["verify"] = verify(quantized, embedder=embedder)
    (out / "export.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m finetune.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--adapter", type=Path, help="a LoRA adapter folder written by finetune.train (out/adapter)")
    p.add_argument("--model", type=Path, help="an already merged Hugging Face model folder")
    p.add_argument(
        "--base",
        default=None,
        help="base model to merge into: a hub id, a folder or a GGUF file (default: the adapter's own)",
    )
    p.add_argument("--quant", default="q4_k_m", help="llama.cpp quantisation type (default q4_k_m)")
    p.add_argument("--name", default=None, help="file name stem (default: the training run's folder name)")
    p.add_argument("--llama-cpp", type=Path, default=VENDORED, help="folder holding convert_hf_to_gguf.py")
    p.add_argument("--embedder", default=None, help="embedding GGUF for the check (default: memr1's)")
    p.add_argument("--no-check", action="store_true", help="skip the observe + ask check through memr1")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="upload the quantised GGUF to this hub repo")
    p.add_argument("--private", action="store_true", help="create the hub repo private")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = export(
        args.out,
        adapter=args.adapter,
        model=args.model,
        base=args.base,
        quant=args.quant,
        name=args.name,
        llama_cpp=args.llama_cpp,
        embedder=args.embedder,
        check=not args.no_check,
    )
    if args.push_to_hub:
        summary["hub"] = push([Path(summary["gguf"])], args.push_to_hub, private=args.private)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
