"""The llama.cpp runtime: quantized models on CPUs that advertise instructions their VM lacks, probe verdicts
keyed to the machine, OpenMP's wait policy, and thread counts for every context memr1 creates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memr1 import InvalidInput, LlamaEmbedder, Memory, models
from memr1.llm import LlamaCpp
from memr1.runtime import parse_threads, per_role_threads, thread_count

# Loaded by every Python started with this folder on its path (the probe child included): it makes
# llama.cpp die with SIGILL whenever a model is loaded with extra buffer types, as on a VM whose CPU
# advertises AMX without enabling it.
FAKE_AMX = """
import os, signal
if os.environ.get("MEMR1_TEST_FAKE_AMX") == "1":
    import llama_cpp.llama_cpp as api
    real = api.llama_model_load_from_file
    def load(path, params):
        if params.use_extra_bufts:
            os.kill(os.getpid(), signal.SIGILL)
        return real(path, params)
    api.llama_model_load_from_file = load
"""

CHILD = """
import json, sys
from memr1 import Memory, MemR1Error
emb, chat, db = sys.argv[1:4]
try:
    with Memory(db, embedder=emb, manager=chat, answerer=chat) as mem:
        mem.observe("I adopted a dog named Buddy.", speaker="Andrew", user="andrew")
        mem.add("Andrew adopted a dog named Buddy.", user="andrew")
        answer = mem.ask("What is the dog's name?", user="andrew")
        llm = mem.answerer._llama()[0]
        print(json.dumps({"ok": True, "extra_bufts": llm.model_params.use_extra_bufts, "answer": answer.text}))
except MemR1Error as e:
    print(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
"""


def _fake_amx_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(FAKE_AMX)
    path = os.pathsep.join([str(site), *sys.path])
    return {**os.environ, "PYTHONPATH": path, "MEMR1_CACHE_DIR": str(tmp_path / "cache"), **extra}


def test_a_model_that_dies_with_sigill_loads_without_extra_buffer_types(
    tmp_path: Path, tiny_embedder: Path, tiny_chat: Path
) -> None:
    """Before: the probe's SIGILL became ModelNotAvailable and the model could not be used at all."""
    env = _fake_amx_env(tmp_path, MEMR1_TEST_FAKE_AMX="1")
    argv = [sys.executable, "-c", CHILD, str(tiny_embedder), str(tiny_chat), str(tmp_path / "bank.db")]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    out = json.loads(first.stdout.splitlines()[-1])
    assert out["ok"], out
    assert out["extra_bufts"] is False
    assert "without extra buffer types" in first.stderr  # said once, in the log
    verdicts = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "probed").iterdir()]
    assert {v["file"]: v["extra_bufts"] for v in verdicts} == {str(tiny_embedder): False, str(tiny_chat): False}
    # the verdict is remembered: the next process loads straight away, without extra buffer types
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert json.loads(again.stdout.splitlines()[-1])["extra_bufts"] is False
    assert "without extra buffer types" not in again.stderr


def test_a_healthy_machine_keeps_extra_buffer_types(tmp_path: Path, tiny_embedder: Path, tiny_chat: Path) -> None:
    env = _fake_amx_env(tmp_path, MEMR1_TEST_FAKE_AMX="0")
    argv = [sys.executable, "-c", CHILD, str(tiny_embedder), str(tiny_chat), str(tmp_path / "bank.db")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["ok"] and out["extra_bufts"] is True, (out, done.stderr[-1000:])


def test_a_probe_verdict_from_another_machine_is_not_trusted(
    tmp_path: Path, tiny_chat: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the marker was keyed on the file and the llama-cpp-python version only, so a home directory shared
    with a machine of another CPU (or llama.cpp build) trusted its pass, and the process died with exit code 132."""
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(tmp_path / "cache"))
    runs: list[bool] = []
    real = models._run_probe

    def counted(path: Path, *, embedding: bool, extra_bufts: bool):
        runs.append(extra_bufts)
        return real(path, embedding=embedding, extra_bufts=extra_bufts)

    monkeypatch.setattr(models, "_run_probe", counted)
    monkeypatch.setattr(models, "_probed", {})
    assert models.probe(tiny_chat, embedding=False) is True
    assert len(runs) == 1
    monkeypatch.setattr(models, "_probed", {})  # a new process on the same machine trusts the verdict on disk
    models.probe(tiny_chat, embedding=False)
    assert len(runs) == 1
    monkeypatch.setattr(models, "_probed", {})  # the same home directory, mounted on another machine
    monkeypatch.setattr(models, "machine_fingerprint", lambda: "another CPU, another llama.cpp build")
    models.probe(tiny_chat, embedding=False)
    assert len(runs) == 2


def test_the_fingerprint_follows_the_kernel_and_the_llama_cpp_build(monkeypatch: pytest.MonkeyPatch) -> None:
    import platform
    from importlib import metadata

    here = models.machine_fingerprint()
    assert len(here) == 64 and here == models.machine_fingerprint()
    real_version = metadata.version
    for change in (
        lambda: monkeypatch.setattr(platform, "release", lambda: "another kernel"),
        lambda: monkeypatch.setattr(
            metadata, "version", lambda name: "9.9.9" if name == "llama-cpp-python" else real_version(name)
        ),
    ):
        models.machine_fingerprint.cache_clear()
        change()
        assert models.machine_fingerprint() != here
        monkeypatch.undo()
    models.machine_fingerprint.cache_clear()
    assert models.machine_fingerprint() == here


def test_openmp_threads_wait_passively_unless_the_user_chose(tmp_path: Path) -> None:
    """Before: nothing set it, and two processes on 2 cores made one embedding 3 ms -> 1.1 s (RESULTS.md)."""
    code = "import os, memr1; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert chosen.stdout.strip() == "PASSIVE"
    kept = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert kept.stdout.strip() == "ACTIVE"
    late = "import llama_cpp, logging; logging.basicConfig(); import memr1, sys\n" + textwrap.dedent(f"""
        memr1.LlamaEmbedder({str(tmp_path / "missing.gguf")!r})
        from memr1 import runtime
        print(runtime._LLAMA_LOADED_EARLY)
    """)
    early = subprocess.run([sys.executable, "-c", late], env=env, capture_output=True, text=True, check=True)
    assert early.stdout.strip() == "True"  # known, so the first model load warns


def _threads_of(llm) -> tuple[int, int]:
    return llm.context_params.n_threads, llm.context_params.n_threads_batch


def test_threads_reach_every_context_memr1_creates(bank: Path, tiny_embedder: Path, tiny_chat: Path) -> None:
    """Before: n_threads_batch was left to llama-cpp-python, which takes every core, and Memory(embedder=path)
    had no thread setting at all."""
    with Memory(
        bank,
        embedder=tiny_embedder,
        manager=tiny_chat,
        answerer=tiny_chat,
        threads={"embedder": 1, "manager": 2, "answerer": 3},
    ) as mem:
        mem.add("Andrew adopted a dog named Buddy.")
        assert _threads_of(mem.embedder._llama()[0]) == (1, 1)
        assert _threads_of(mem.manager._llama()[0]) == (2, 2)
        assert _threads_of(mem.answerer._llama()[0]) == (3, 3)


def test_thread_precedence_argument_then_role_variable_then_global(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MEMR1_THREADS", "MEMR1_EMBEDDER_THREADS", "MEMR1_MANAGER_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert thread_count("embedder") == 1
    assert 1 <= thread_count("manager") <= 8
    monkeypatch.setenv("MEMR1_THREADS", "3")
    assert thread_count("embedder") == 3 and thread_count("answerer") == 3
    monkeypatch.setenv("MEMR1_EMBEDDER_THREADS", "2")
    assert thread_count("embedder") == 2 and thread_count("manager") == 3
    assert thread_count("embedder", 5) == 5
    assert LlamaEmbedder("x.gguf").n_threads is None  # resolved at load time, so the environment counts
    monkeypatch.setenv("MEMR1_MANAGER_THREADS", "many")
    with pytest.raises(InvalidInput, match="MEMR1_MANAGER_THREADS"):
        thread_count("manager")


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "2", {"embedder": 0}, {"reranker": 1}, [1]])
def test_bad_thread_counts_are_refused(bank: Path, bad: object) -> None:
    with pytest.raises(InvalidInput):
        Memory(bank, threads=bad)  # type: ignore[arg-type]
    assert not bank.exists()  # refused before the file is created
    with pytest.raises(InvalidInput):
        per_role_threads(bad)  # type: ignore[arg-type]


def test_bad_thread_counts_on_model_objects_are_refused() -> None:
    with pytest.raises(InvalidInput):
        LlamaCpp("x.gguf", n_threads=0)
    with pytest.raises(InvalidInput):
        LlamaEmbedder("x.gguf", n_threads=-2)


def test_cli_threads_option(bank: Path, tiny_embedder: Path) -> None:
    assert parse_threads("2") == 2
    assert parse_threads("embedder=1, manager=2") == {"embedder": 1, "manager": 2}
    from click.testing import CliRunner

    from memr1.cli import cli

    runner = CliRunner()
    ok = runner.invoke(cli, ["add", "hello", "--db", str(bank), "--embedder", str(tiny_embedder), "--threads", "1"])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(cli, ["add", "hello", "--db", str(bank), "--threads", "embedder=zero"])
    assert bad.exit_code != 0 and "--threads" in bad.output
