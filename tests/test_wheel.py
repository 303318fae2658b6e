"""The built wheel: `memr1 bench`, the data loaders and the scorers work from an install, outside a clone.

The wheel is built from this checkout and installed into a fresh virtualenv that borrows the test
environment's packages (llama-cpp-python and co. are not reinstalled), then run from a directory
that has no benchmarks/ in it.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the virtualenv's bin/ layout is POSIX")


def run(*args: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["MEMR1_CACHE_DIR"] = str(cwd / "cache")  # the retrieval benchmark's embedding cache (and probe verdicts)
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding memr1 from a wheel built here; its bin/ directory."""
    pytest.importorskip("hatchling", reason="building the wheel offline needs hatchling (the dev extra)")
    tmp = tmp_path_factory.mktemp("wheel")
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", ROOT]
    run(sys.executable, "-m", "pip", *build, cwd=tmp)
    (wheel,) = (tmp / "dist").glob("memr1-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv, cwd=tmp)
    python = venv / "bin" / "python"
    # a venv made from inside another one sees the base interpreter's packages, not this one's: add them
    inner = run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp).stdout.strip()
    Path(inner, "outer-site-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # --ignore-installed: the checkout's editable memr1 is visible here too, and must not count as installed
    run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed", wheel, cwd=tmp)
    return venv / "bin"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory outside the checkout, with a LoCoMo-shaped file of one conversation."""
    sample = {
        "sample_id": "conv-26",
        "conversation": {
            "speaker_a": "Caroline",
            "speaker_b": "Melanie",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": [
                {"speaker": "Caroline", "dia_id": "D1:1", "text": "I adopted a dog named Buddy."},
                {"speaker": "Melanie", "dia_id": "D1:2", "text": "Lovely! I paint on Sundays."},
            ],
        },
        "qa": [
            {"question": "What is Caroline's dog called?", "answer": "Buddy", "evidence": ["D1:1"], "category": 4},
            {"question": "Who adopted a cat?", "adversarial_answer": "nobody", "evidence": [], "category": 5},
        ],
    }
    (tmp_path / "locomo.json").write_text(json.dumps([sample]))
    assert not (tmp_path / "benchmarks").exists() and ROOT not in tmp_path.parents
    return tmp_path


def test_bench_commands_run_from_the_wheel(installed: Path, elsewhere: Path) -> None:
    for name in ("locomo", "locomo-retrieval"):
        done = run(installed / "memr1", "bench", name, "--help", cwd=elsewhere)
        assert done.stdout.startswith(f"usage: memr1 bench {name} ")
    # a smoke run end to end: tiny models, the scorers (NLTK) and the plots (matplotlib)
    options = "--tiny --data locomo.json --split all --method full-context,rag --quiet --out out"
    run(installed / "memr1", "bench", "locomo", *options.split(), cwd=elsewhere)
    results = json.loads((elsewhere / "out" / "results.json").read_text())
    assert [q["gold"] for q in results["methods"]["rag"]["questions"]] == ["Buddy"]
    assert (elsewhere / "out" / "categories.png").stat().st_size > 0
    options = "--data locomo.json --embedder out/models/tiny-embed.gguf --k 1,5 --quiet --json"
    done = run(installed / "memr1", "bench", "locomo-retrieval", *options.split(), cwd=elsewhere)
    assert json.loads(done.stdout)["config"]["conversations"] == ["conv-26"]


def test_loaders_and_scorers_import_from_the_wheel(installed: Path, elsewhere: Path) -> None:
    script = """
import importlib.util, json, sys
import memr1
from memr1 import datasets, scoring

print(json.dumps({
    "memr1": memr1.__file__,
    "benchmarks": getattr(importlib.util.find_spec("benchmarks"), "origin", None),
    "shared": datasets.DEFAULT_LOCOMO,
    "questions": [q.answer for q in datasets.locomo_questions(datasets.load_locomo("locomo.json"), "train")],
    "turns": [t.dia_id for t in datasets.locomo_turns(datasets.load_locomo("locomo.json")[0])],
    "f1": scoring.locomo_f1("a dog named Buddy", "Buddy", 4),
    "b1": scoring.bleu1("Buddy", "Buddy"),
    "loaders": [callable(datasets.load_longmemeval), callable(datasets.load_msc)],
}))
"""
    got = json.loads(run(installed / "python", "-c", script, cwd=elsewhere).stdout)
    assert Path(got["memr1"]).is_relative_to(installed.parent)  # the wheel's copy, not the checkout's
    assert got["benchmarks"] is None or not Path(got["benchmarks"]).is_relative_to(ROOT)
    assert got["shared"] is None  # no ../shared beside site-packages
    assert got["questions"] == ["Buddy"] and got["turns"] == ["D1:1", "D1:2"]
    assert got["f1"] == pytest.approx(0.5) and got["b1"] == pytest.approx(1.0)
    assert got["loaders"] == [True, True]
