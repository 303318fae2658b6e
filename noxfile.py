"""Developer sessions: `nox -l` lists them."""

from __future__ import annotations

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
    """Check style and obvious bugs with ruff."""
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "benchmarks", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "benchmarks", "noxfile.py")


@nox.session
def bench(session: nox.Session) -> None:
    """Run the retrieval speed benchmark (pass options after --)."""
    session.install(*CONSTRAINTS, "-e", ".")
    session.run("python", "-m", "benchmarks.retrieval_speed", *session.posargs)
