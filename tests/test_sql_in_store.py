"""Every SQL statement memr1 runs is in store.py (issue 13): no other module writes SQL or runs it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import memr1

PACKAGE = Path(memr1.__file__).parent
# Modules with an SQLite file of their own, which is not a bank, and why.
OWN_DATABASE = {"bench_locomo_retrieval.py": "its embedding cache"}
# A statement, not a word: "DELETE" is a change kind and "Select the memories" a prompt.
SQL = re.compile(
    r"^(select\s.*\bfrom\b|select\s+(\d|\*|\w+\()|insert\s+(or\s+\w+\s+)?into\s|update\s+\w+\s+set\s|"
    r"delete\s+from\s|create\s+((temp|temporary|unique|virtual)\s+)?(table|index|trigger|view)\s|pragma\s+\w)",
    re.IGNORECASE | re.DOTALL,
)


def text_of(node: ast.AST) -> str | None:
    """A string constant, or an f-string with each interpolation as {}."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def offences(source: str) -> list[str]:
    found, tree = [], ast.parse(source)
    parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        text = text_of(node) if id(node) not in parts else None  # an f-string is checked whole
        if text is not None and SQL.match(text.strip()):
            found.append(f"line {node.lineno}: SQL {text.strip()[:60]!r}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("execute", "executemany", "executescript"):
                found.append(f"line {node.lineno}: .{node.func.attr}(")
    return found


def test_the_check_sees_sql() -> None:
    assert sorted(offences('conn.execute("SELECT id FROM memories WHERE user_id = ?")')) == [
        "line 1: .execute(",
        "line 1: SQL 'SELECT id FROM memories WHERE user_id = ?'",
    ]
    assert offences('q = f"select id, text from memories where id in ({marks})"')
    assert offences('q = "  DELETE FROM turns"') and offences('q = "PRAGMA journal_mode"')
    assert offences('q = "INSERT INTO meta (key, value) VALUES (?, ?)"')
    assert offences('q = "UPDATE memories SET text = ?"') and offences('q = "CREATE VIRTUAL TABLE t USING fts5(x)"')
    assert not offences('kind = "DELETE"; prompt = "Select the memories, then answer."; doc = "Delete one memory."')
    assert offences((PACKAGE / "store.py").read_text(encoding="utf-8"))


def test_all_sql_is_in_store_py() -> None:
    modules = sorted(p for p in PACKAGE.glob("*.py") if p.name != "store.py" and p.name not in OWN_DATABASE)
    assert len(modules) > 5
    found = {p.name: offences(p.read_text(encoding="utf-8")) for p in modules}
    assert {name: lines for name, lines in found.items() if lines} == {}
