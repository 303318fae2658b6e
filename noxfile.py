"""Developer sessions: `nox -l` lists them."""

from __future__ import annotations

import shutil

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"
CONSTRAINTS = ("-c", ".ci/constraints.txt")  # pins llama-cpp-python so pip's wheel cache is reused


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (offline; builds its own tiny GGUF models)."""
    session.install(*CONSTRAINTS, "-e", ".[dev]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Check style and obvious bugs with ruff, and types with mypy (configured in pyproject.toml)."""
    session.install("-c", ".ci/constraints.txt", "-e", ".[dev]")
    session.run("ruff", "check", "src", "tests", "benchmarks", "finetune", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "finetune", "noxfile.py")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Run a benchmark: `nox -s bench -- locomo --tiny` (default: retrieval_speed; options after the name)."""
    session.install(*CONSTRAINTS, "-e", ".[bench]")
    args = list(session.posargs)
    module = args.pop(0) if args and not args[0].startswith("-") else "retrieval_speed"
    session.run("python", "-m", f"benchmarks.{module}", *args)


def install_finetune(session: nox.Session) -> None:
    """torch first, so that pip takes the wheel this machine has instead of resolving the CUDA build and its GBs."""
    session.install(*CONSTRAINTS, "torch==2.13.0")
    gpu = ",finetune-gpu" if shutil.which("nvidia-smi") else ""  # Unsloth needs CUDA to install and import
    session.install(*CONSTRAINTS, "-e", f".[finetune{gpu}]")


@nox.session
def finetune_data(session: nox.Session) -> None:
    """Build both agents' training examples from LoCoMo (options after --, e.g. -- --out runs/ft-data)."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("python", "-m", "finetune.data", *session.posargs)


@nox.session
def finetune_answer(session: nox.Session) -> None:
    """GRPO-train the Answer Agent (heavy; options after --, e.g. -- --preset cpu-smollm2 --data runs/ft-data --out DIR)."""
    install_finetune(session)
    session.run("python", "-m", "finetune.train", "answer", *session.posargs)


@nox.session
def finetune_embedder(session: nox.Session) -> None:
    """Fine-tune a GGUF embedder on LoCoMo's train conversation (19 minutes on 2 cores for MiniLM).

    By default MiniLM from ../shared into runs/embedder; options after -- replace that, e.g.
    -- --base MODEL.gguf --out DIR --data locomo10.json."""
    install_finetune(session)
    default = ["--base", "../shared/models/all-MiniLM-L6-v2-f16.gguf", "--out", "runs/embedder"]
    session.run("python", "-m", "finetune.embedder", *(session.posargs or default))


@nox.session
def finetune_cpu(session: nox.Session) -> None:
    """The whole CPU run of RESULTS.md in one command: SmolLM2's Answer Agent on LoCoMo, about an hour on 2 cores.

    Builds the examples (raw turns, no chat model), trains with `--preset cpu-smollm2`, then exports the untrained
    and trained adapters and scores both on the validation conversation through memr1 (`--compare`). Options after
    -- go to the training, e.g. `-- --set max_minutes=5`. Needs ../shared (SmolLM2, MiniLM, LoCoMo) beside the clone.
    """
    install_finetune(session)
    data, out = "runs/ft-data", "runs/ft-smollm2"
    shared = "../shared"
    session.run(
        "python", "-m", "finetune.data", "--out", data, "--data", f"{shared}/data/locomo10.json",
        "--manager", "verbatim", "--embedder", f"{shared}/models/all-MiniLM-L6-v2-f16.gguf",
    )  # fmt: skip
    session.run(
        "python", "-m", "finetune.train", "answer", "--preset", "cpu-smollm2", "--data", data, "--out", out,
        "--compare", *session.posargs,
    )  # fmt: skip


@nox.session
def finetune_manager(session: nox.Session) -> None:
    """GRPO-train the Memory Manager (heavy; options after --, e.g. -- --data runs/ft-data --out runs/ft-manager)."""
    install_finetune(session)
    session.run("python", "-m", "finetune.train", "manager", *session.posargs)


@nox.session
def export(session: nox.Session) -> None:
    """Merge a trained LoRA adapter, convert it to GGUF and quantise it, offline (options after --)."""
    install_finetune(session)
    session.run("python", "-m", "finetune.export", *session.posargs)
