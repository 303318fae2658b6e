"""The memr1 command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from memr1.cli import cli


def run(*args: str, ok: bool = True) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_add_search_list_history_export_import_stats(tmp_path: Path, tiny_embedder: Path) -> None:
    db, model = str(tmp_path / "cli.db"), str(tiny_embedder)
    added = json.loads(
        run(
            "add",
            "Andrew adopted a dog named Buddy.",
            "--user",
            "andrew",
            "--at",
            "2023-05-08",
            "--metadata",
            '{"source": "chat"}',
            "--db",
            db,
            "--embedder",
            model,
            "--json",
        )
    )
    assert added["text"] == "Andrew adopted a dog named Buddy." and added["metadata"] == {"source": "chat"}
    assert "Buddy" in run("search", "dog Buddy", "--user", "andrew", "--db", db)
    hits = json.loads(run("search", "dog Buddy", "--user", "andrew", "--db", db, "--json"))
    assert hits[0]["memory"]["id"] == added["id"]
    assert "#1 [andrew] 2023-05-08" in run("list", "--db", db)
    assert "ADD" in run("history", str(added["id"]), "--db", db)
    out = tmp_path / "x.jsonl"
    assert "exported 1" in run("export", str(out), "--db", db)
    db2 = str(tmp_path / "two.db")
    assert "imported 1" in run("import", str(out), "--db", db2, "--embedder", model)
    stats = json.loads(run("stats", "--db", db2, "--json"))
    assert stats["memories"] == 1 and stats["sqlite_vec_version"].startswith("v0.1")
    assert "deleted #1" in run("delete", "1", "--db", db2)


def test_errors_are_one_clear_line(tmp_path: Path, tiny_embedder: Path) -> None:
    db = str(tmp_path / "e.db")
    out = run("history", "42", "--db", db, ok=False)
    assert "MemoryNotFound" in out and "Traceback" not in out
    out = run("add", "x", "--metadata", "{bad", "--db", db, "--embedder", str(tiny_embedder), ok=False)
    assert "--metadata" in out
    notdb = tmp_path / "notes.txt"
    notdb.write_text("hello " * 1000)
    assert "not a memr1 bank" in run("stats", "--db", str(notdb), ok=False)


def test_console_script_help() -> None:
    result = subprocess.run([sys.executable, "-m", "memr1", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("add", "search", "list", "history", "export", "import", "stats"):
        assert command in result.stdout
