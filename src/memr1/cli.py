"""The `memr1` command: a thin shell over the `Memory` API."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import click

from .errors import MemR1Error
from .memory import Memory
from .schema import HistoryEntry, MemoryItem


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MemR1Error as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None

    return wrapper


def bank_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)
    fn = click.option("--embedder", envvar="MEMR1_EMBEDDER", help="Embedding GGUF: a path or owner/repo/file.gguf.")(fn)
    fn = click.option("--db", default="memr1.db", envvar="MEMR1_DB", show_default=True, help="The bank file.")(fn)
    return _fail_cleanly(fn)


def _open(db: str, embedder: str | None) -> Memory:
    return Memory(db, embedder=embedder)


def _emit(as_json: bool, data: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2, default=str))
    else:
        human()


def _line(item: MemoryItem) -> str:
    when = f" {item.at:%Y-%m-%d}" if item.at else ""
    return f"#{item.id} [{item.user}]{when} {item.text}"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="memr1")
def cli() -> None:
    """memr1: long-term memory for LLM agents, in one SQLite file.

    \b
    Try:  memr1 add "Andrew adopted a dog named Buddy." --user andrew
          memr1 search "What pets does Andrew have?" --user andrew
          memr1 stats
    Every command takes --db (default memr1.db, or $MEMR1_DB) and --json.
    """


@cli.command()
@click.argument("text")
@click.option("--user", default="default", show_default=True)
@click.option("--at", help="When the fact was said (ISO 8601).")
@click.option("--metadata", help="A JSON object stored with the memory.")
@bank_options
def add(
    db: str, embedder: str | None, as_json: bool, text: str, user: str, at: str | None, metadata: str | None
) -> None:
    """Store TEXT as a memory verbatim."""
    try:
        meta = json.loads(metadata) if metadata else None
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--metadata") from None
    with _open(db, embedder) as mem:
        item = mem.add(text, user=user, at=at, metadata=meta)
    _emit(as_json, item.model_dump(mode="json"), lambda: click.echo(f"added {_line(item)}"))


@cli.command()
@click.argument("query")
@click.option("-k", default=10, show_default=True, help="How many hits.")
@click.option("--user", default="default", show_default=True)
@click.option("--since", help="Only facts said at or after this time.")
@click.option("--until", help="Only facts said at or before this time.")
@click.option("--mode", type=click.Choice(["hybrid", "vector", "text"]), default="hybrid", show_default=True)
@bank_options
def search(db: str, embedder: str | None, as_json: bool, query: str, k: int, user: str, since: str | None,
           until: str | None, mode: str) -> None:  # fmt: skip
    """Hybrid search of one user's memories."""
    with _open(db, embedder) as mem:
        hits = mem.search(query, k, user=user, since=since, until=until, mode=mode)  # type: ignore[arg-type]

    def human() -> None:
        for hit in hits:
            click.echo(f"{hit.score:.4f}  {_line(hit.memory)}")
        if not hits:
            click.echo("no matches")

    _emit(as_json, [h.model_dump(mode="json") for h in hits], human)


@cli.command(name="list")
@click.option("--user", help="Only this user's memories (default: everyone's).")
@click.option("--limit", type=int)
@bank_options
def list_(db: str, embedder: str | None, as_json: bool, user: str | None, limit: int | None) -> None:
    """List memories, oldest first."""
    with _open(db, embedder) as mem:
        items = mem.list(user=user, limit=limit)
    _emit(as_json, [i.model_dump(mode="json") for i in items], lambda: [click.echo(_line(i)) for i in items])


@cli.command()
@click.argument("memory_id", type=int)
@bank_options
def history(db: str, embedder: str | None, as_json: bool, memory_id: int) -> None:
    """Every change to one memory, oldest first."""
    with _open(db, embedder) as mem:
        entries = mem.history(memory_id)

    def human() -> None:
        for e in entries:
            change = {"ADD": f"+ {e.after}", "DELETE": f"- {e.before}"}.get(e.kind, f"{e.before}  ->  {e.after}")
            click.echo(f"{e.changed_at:%Y-%m-%d %H:%M:%S} {e.kind:<6} by {e.actor}: {change}")

    _emit(as_json, [_entry(e) for e in entries], human)


def _entry(entry: HistoryEntry) -> dict[str, Any]:
    return entry.model_dump(mode="json")


@cli.command()
@click.argument("memory_id", type=int)
@bank_options
def delete(db: str, embedder: str | None, as_json: bool, memory_id: int) -> None:
    """Delete one memory (its history is kept)."""
    with _open(db, embedder) as mem:
        mem.delete(memory_id)
    _emit(as_json, {"deleted": memory_id}, lambda: click.echo(f"deleted #{memory_id}"))


@cli.command(name="export")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--user", help="Only this user's data.")
@bank_options
def export_(db: str, embedder: str | None, as_json: bool, path: str, user: str | None) -> None:
    """Write turns, memories and history to a JSONL file."""
    with _open(db, embedder) as mem:
        count = mem.export(path, user=user)
    _emit(as_json, {"exported": count, "path": path}, lambda: click.echo(f"exported {count} memories to {path}"))


@cli.command(name="import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@bank_options
def import_(db: str, embedder: str | None, as_json: bool, path: str) -> None:
    """Import a JSONL export (all or nothing), re-embedding with this bank's embedder."""
    with _open(db, embedder) as mem:
        count = mem.import_jsonl(path)
    _emit(as_json, {"imported": count}, lambda: click.echo(f"imported {count} memories into {db}"))


@cli.command()
@bank_options
def stats(db: str, embedder: str | None, as_json: bool) -> None:
    """Counts, size, embedder and SQLite versions of a bank."""
    with _open(db, embedder) as mem:
        data = mem.stats()
    _emit(as_json, data, lambda: [click.echo(f"{k:>20}: {v}") for k, v in data.items()])
