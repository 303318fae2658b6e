"""The `memr1` command: a thin shell over the `Memory` API."""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .config import Config, per_role_threads
from .errors import MemR1Error
from .llm import DEFAULT_TIMEOUT
from .memory import DEFAULT_DISTILL, Memory
from .runtime import parse_threads
from .schema import Answer, HistoryEntry, MemoryItem, Operation


def _fail_cleanly(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MemR1Error as e:
            raise click.ClickException(f"{type(e).__name__}: {e}") from None

    return wrapper


def _remember_threads(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    try:
        threads = parse_threads(value)
        per_role_threads(threads)  # refused here, as a usage error, rather than when the bank opens
        ctx.meta["memr1.threads"] = threads
    except MemR1Error as e:
        raise click.BadParameter(str(e)) from None


THREADS_HELP = (
    "llama.cpp threads: N for every model, or role=N,... (embedder, manager, answerer). "
    "Default: $MEMR1_<ROLE>_THREADS, $MEMR1_THREADS, else 1 for the embedder and the cores (up to 8) for agents."
)


def threads_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--threads", expose_value=False, callback=_remember_threads, help=THREADS_HELP)(fn)


def _threads() -> Any:
    return click.get_current_context().meta.get("memr1.threads")


def bank_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = threads_option(fn)
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)
    fn = click.option("--embedder", help="Embedding GGUF: a path or owner/repo/file.gguf.  [default: $MEMR1_EMBEDDER]")(
        fn
    )
    fn = click.option("--db", default="memr1.db", envvar="MEMR1_DB", show_default=True, help="The bank file.")(fn)
    return _fail_cleanly(fn)


def _remember_timeout(ctx: click.Context, _param: click.Parameter, value: float | None) -> None:
    if value is not None:
        ctx.meta["memr1.server_options"] = {"timeout": value}


def _server_options() -> Any:
    return click.get_current_context().meta.get("memr1.server_options")


def agent_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--timeout",
        type=click.FloatRange(0, 86_400, min_open=True),
        expose_value=False,
        callback=_remember_timeout,
        help=f"Seconds one call to the --base-url server may take, retries included.  [default: {DEFAULT_TIMEOUT:g}]",
    )(fn)
    fn = click.option(
        "--base-url", help="An OpenAI-compatible server (then models are names).  [default: $MEMR1_BASE_URL]"
    )(fn)
    fn = click.option(
        "--answerer", help="Answer Agent GGUF: a path or owner/repo/file.gguf.  [default: $MEMR1_ANSWERER]"
    )(fn)
    fn = click.option(
        "--manager", help="Memory Manager GGUF: a path or owner/repo/file.gguf.  [default: $MEMR1_MANAGER]"
    )(fn)
    return fn


def _open(db: str, embedder: str | None, **agents: Any) -> Memory:
    """Only what was typed goes on: the library applies the environment (memr1.config), as for any caller."""
    if "base_url" in agents:
        agents["server_options"] = _server_options()
    return Memory(db, embedder=embedder, threads=_threads(), **agents)


def _echo_each(items: Any, line: Callable[[Any], str]) -> None:
    for item in items:
        click.echo(line(item))


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
def search(
    db: str,
    embedder: str | None,
    as_json: bool,
    query: str,
    k: int,
    user: str,
    since: str | None,
    until: str | None,
    mode: str,
) -> None:
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
    _emit(as_json, [i.model_dump(mode="json") for i in items], lambda: _echo_each(items, _line))


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
@click.argument("path", type=click.Path(dir_okay=False))
@bank_options
def backup(db: str, embedder: str | None, as_json: bool, path: str) -> None:
    """Copy the bank to PATH, consistently, even while other processes write to it."""
    if not Path(db).is_file():  # opening would create an empty bank, only to back it up
        raise click.ClickException(f"no bank at {db}")
    with _open(db, embedder) as mem:
        mem.backup(path)
    _emit(as_json, {"backup": path, "db": db}, lambda: click.echo(f"backed up {db} to {path}"))


@cli.command()
@bank_options
def stats(db: str, embedder: str | None, as_json: bool) -> None:
    """Counts, size, embedder and SQLite versions of a bank."""
    with _open(db, embedder) as mem:
        data = mem.stats()
    _emit(as_json, data, lambda: _echo_each(data.items(), lambda kv: f"{kv[0]:>20}: {kv[1]}"))


def _op_line(op: Operation) -> str:
    if op.kind == "UPDATE":
        return f"UPDATE #{op.memory_id}: {op.previous!r} -> {op.text!r}"
    if op.kind == "DELETE":
        return f"DELETE #{op.memory_id}: {op.previous!r}"
    return f"{op.kind} #{op.memory_id}: {op.text!r}"


@cli.command()
@click.argument("text")
@click.option("--speaker")
@click.option("--at", help="When the turn was said (ISO 8601).")
@click.option("--session")
@click.option("--user", default="default", show_default=True)
@agent_options
@bank_options
def observe(
    db: str,
    embedder: str | None,
    as_json: bool,
    text: str,
    speaker: str | None,
    at: str | None,
    session: str | None,
    user: str,
    manager: str | None,
    answerer: str | None,
    base_url: str | None,
) -> None:
    """Let the Memory Manager turn one dialogue turn into memory operations."""
    with _open(db, embedder, manager=manager, answerer=answerer, base_url=base_url) as mem:
        ops = mem.observe(text, speaker=speaker, at=at, session=session, user=user)
    _emit(
        as_json,
        [o.model_dump(mode="json") for o in ops],
        lambda: _echo_each(ops, _op_line) if ops else click.echo("no change"),
    )


@cli.command()
@click.argument("question")
@click.option("--user", default="default", show_default=True)
@click.option("-k", default=60, show_default=True, help="Memories or turns to retrieve.")
@click.option(
    "--distill/--no-distill",
    default=DEFAULT_DISTILL,
    show_default=True,
    help="Select the items that matter before answering (the paper's Answer Agent, for trained models).",
)
@agent_options
@bank_options
def ask(
    db: str,
    embedder: str | None,
    as_json: bool,
    question: str,
    user: str,
    k: int,
    distill: bool,
    manager: str | None,
    answerer: str | None,
    base_url: str | None,
) -> None:
    """Ask the Answer Agent a question about one user's memories."""
    with _open(db, embedder, manager=manager, answerer=answerer, base_url=base_url) as mem:
        answer = mem.ask(question, user=user, k=k, distill=distill)
    _emit(as_json, answer.model_dump(mode="json"), lambda: _print_answer(answer))


def _print_answer(answer: Answer) -> None:
    click.echo(answer.text)
    for item in answer.selected:
        click.echo(f"  from {_line(item)}")
    for turn in answer.selected_turns:
        said = f" {turn.at.date()}" if turn.at else ""
        click.echo(f"  from turn #{turn.id}{said} {turn.speaker + ': ' if turn.speaker else ''}{turn.text}")
    chosen = len(answer.selected) + len(answer.selected_turns)
    click.echo(f"  ({answer.retrieved} retrieved, {chosen} selected, {answer.tokens} tokens, {answer.seconds:.2f}s)")


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--user", default="default", show_default=True, help="For turns that name no user.")
@agent_options
@bank_options
def ingest(
    db: str,
    embedder: str | None,
    as_json: bool,
    path: str,
    user: str,
    manager: str | None,
    answerer: str | None,
    base_url: str | None,
) -> None:
    """Observe a dialogue file: a JSON array or JSONL of turns ({"text", "speaker", "at", "session", "user"})."""
    turns = _read_turns(Path(path))
    with _open(db, embedder, manager=manager, answerer=answerer, base_url=base_url) as mem:
        ops = mem.observe_many(turns, user=user, progress=not as_json)
        usage = dict(mem.usage)
    counts = {kind: sum(o.kind == kind for o in ops) for kind in ("ADD", "UPDATE", "DELETE")}
    _emit(
        as_json,
        {"turns": len(turns), **counts, **usage},
        lambda: click.echo(
            f"{len(turns)} turns: {counts['ADD']} added, {counts['UPDATE']} updated, "
            f"{counts['DELETE']} deleted ({usage['llm_calls']} LLM calls)"
        ),
    )


def _read_turns(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"cannot read {path} as UTF-8 text: {e}") from None
    try:
        data = json.loads(text)
        rows = data if isinstance(data, list) else [data]
    except (json.JSONDecodeError, RecursionError):
        try:
            rows = [json.loads(line) for line in text.split("\n") if line.strip()]
        except (json.JSONDecodeError, RecursionError) as e:
            raise click.BadParameter(f"{path} is neither JSON nor JSONL: {str(e)[:200]}") from None
    if not all(isinstance(r, dict) and isinstance(r.get("text"), str) for r in rows):
        raise click.BadParameter(f"{path}: every turn must be an object with a 'text' string")
    allowed = {"text", "speaker", "at", "session", "user", "metadata"}
    return [{k: v for k, v in r.items() if k in allowed} for r in rows]


DEMO_TURNS = [
    ("I adopted a dog named Buddy.", "2023-05-08T13:56", "s1"),
    ("I adopted another dog, Scout!", "2023-06-02T10:00", "s2"),
]


@cli.command()
@click.option("--db", type=click.Path(dir_okay=False), help="Keep the demo bank here (default: a temporary file).")
@click.option("--embedder", help="Embedding GGUF (default: $MEMR1_EMBEDDER, else bge-small-en-v1.5 from the hub).")
@click.option(
    "--tiny", is_flag=True, help="Use tiny random-weight models built locally: no download, nonsense answers."
)
@agent_options
@threads_option
@_fail_cleanly
def demo(
    db: str | None, embedder: str | None, tiny: bool, manager: str | None, answerer: str | None, base_url: str | None
) -> None:
    """Run the Buddy and Scout example end to end: observe two turns, then ask."""
    # The demo picks tiny models for what is unset, so it must see what the environment sets, as Memory would.
    chosen = Config.load({"embedder": embedder, "manager": manager, "answerer": answerer, "base_url": base_url})
    with tempfile.TemporaryDirectory() as tmp:
        models = _demo_models(
            Path(tmp),
            embedder=chosen.embedder,
            manager=chosen.manager.model,
            answerer=chosen.answerer.model,
            tiny=tiny,
            server=bool(chosen.base_url),
        )
        with Memory(
            db or Path(tmp) / "demo.db",
            base_url=chosen.base_url,
            server_options=_server_options(),
            threads=_threads(),
            **models,
        ) as mem:
            click.echo(
                f"bank: {mem.path}  ({mem.sqlite_info()['driver']}, SQLite {mem.sqlite_info()['sqlite_version']}, "
                f"sqlite-vec {mem.sqlite_info()['sqlite_vec_version']})\n"
            )
            for text, at, session in DEMO_TURNS:
                click.echo(f"Andrew ({at}): {text}")
                ops = mem.observe(text, speaker="Andrew", at=at, session=session, user="andrew")
                for op in ops or []:
                    click.echo(f"  -> {_op_line(op)}")
                if not ops:
                    click.echo("  -> no change")
            question = "How many dogs does Andrew have?"
            click.echo(f"\nQ: {question}\nA: ", nl=False)
            _print_answer(mem.ask(question, user="andrew"))
            click.echo(
                f"\nLLM calls: {mem.usage['llm_calls']}, prompt tokens: {mem.usage['prompt_tokens']}, "
                f"completion tokens: {mem.usage['completion_tokens']}"
            )


def _demo_models(
    tmp: Path, *, embedder: str | None, manager: str | None, answerer: str | None, tiny: bool, server: bool
) -> dict[str, Any]:
    """The models the demo asked for; tiny local ones where the hub's defaults cannot be had."""
    from .embedding import DEFAULT_EMBEDDER
    from .errors import ModelNotAvailable
    from .llm import DEFAULT_CHAT_MODEL
    from .models import resolve
    from .tiny_models import write_chat_model, write_embedding_model

    wanted = {"embedder": embedder, "manager": manager, "answerer": answerer}
    defaults = {"embedder": DEFAULT_EMBEDDER, "manager": DEFAULT_CHAT_MODEL, "answerer": DEFAULT_CHAT_MODEL}
    out: dict[str, Any] = {}
    for role, ref in wanted.items():
        if server and role != "embedder":
            out[role] = ref
            continue
        if ref is None and not tiny:
            try:
                resolve(defaults[role])
                ref = defaults[role]
            except ModelNotAvailable as e:
                click.secho(f"! {role}: {e}", fg="yellow", err=True)
        if ref is None:
            click.secho(
                f"! {role}: using a tiny random-weight model built locally: the pipeline is real, "
                "the answers are nonsense. Pass --manager/--answerer/--embedder for real models.",
                fg="yellow",
                err=True,
            )
            writer = write_embedding_model if role == "embedder" else write_chat_model
            ref = str(writer(tmp / f"tiny-{role}.gguf"))
        out[role] = ref
    return out


@cli.group()
def bench() -> None:
    """Benchmarks on LoCoMo (pip install 'memr1[bench]' for the scorers and plots)."""


def _benchmark(name: str, module: str, summary: str) -> Callable[..., Any]:
    """A pass-through command: the harness's own argparse parses (and documents, with -h) the options."""

    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        import importlib
        import sys

        main = importlib.import_module(f"memr1.{module}").main  # loaded only when this command runs
        sys.exit(main(list(args), prog=f"memr1 bench {name}"))

    command.__doc__ = f"{summary}\n\nmemr1.{module} parses the options: -h lists them."
    return command


for _name, _module, _summary in (
    ("locomo", "bench_locomo", "LoCoMo QA: F1, BLEU-1, J, latency, tokens."),
    ("locomo-retrieval", "bench_locomo_retrieval", "LoCoMo evidence recall@k of search(), no LLM."),
):
    bench.command(name=_name, context_settings={"ignore_unknown_options": True, "help_option_names": []})(
        _benchmark(_name, _module, _summary)
    )
