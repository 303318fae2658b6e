"""OpenAICompatible against misbehaving servers: real sockets on 127.0.0.1, one thread per connection.

Each server below once made memr1 leak the API key, hang, read 200 MB, or raise an error that was
not memr1's (issue 12). A server may only ever cost a ModelNotAvailable, within the timeout.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from memr1 import InvalidInput, Memory, ModelNotAvailable, prompts
from memr1.cli import cli
from memr1.llm import OpenAICompatible
from memr1.prompts import OutputRejected

MESSAGES = [{"role": "user", "content": "hi"}]
COMPLETION = {
    "choices": [{"message": {"content": '{"answer": "a dog"}'}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 5},
}


class Server:
    """Answers every request with `respond(conn)` and records the requests' heads."""

    def __init__(self, respond: Callable[[socket.socket], None]) -> None:
        self.respond, self.heads, self.sent = respond, [], 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed at teardown
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                if not (chunk := conn.recv(65536)):
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            while length and len(body) < int(length[1]):
                body += conn.recv(65536)
            self.heads.append(head)
            try:
                self.respond(conn)
            except OSError:
                pass  # the client hung up: what memr1 should do once it has had enough

    def send(self, conn: socket.socket, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Server, socket.socket], None]], Server]]:
    servers: list[Server] = []

    def start(respond: Callable[[Server, socket.socket], None]) -> Server:
        server = Server(lambda conn: respond(server, conn))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.listener.close()


def answer(body: bytes, status: bytes = b"200 OK", headers: bytes = b"") -> Callable[[Server, socket.socket], None]:
    def respond(server: Server, conn: socket.socket) -> None:
        server.send(
            conn,
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: application/json\r\n"
            + headers
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body,
        )

    return respond


def complete(llm: OpenAICompatible, parse: Callable[[str], object] = lambda raw: raw):
    return llm.complete(MESSAGES, prompts.ANSWER_SCHEMA, parse=parse)


def test_a_well_formed_answer_is_read(serve) -> None:
    server = serve(answer(json.dumps(COMPLETION).encode()))
    out = complete(OpenAICompatible(server.url, "m", api_key="sk-given"))
    assert (out.text, out.prompt_tokens, out.completion_tokens) == ('{"answer": "a dog"}', 7, 5)
    assert b"Authorization: Bearer sk-given" in server.heads[0]


@pytest.mark.parametrize("status", [b"302 Found", b"307 Temporary Redirect", b"308 Permanent Redirect"])
def test_a_redirect_is_refused_and_the_key_goes_nowhere_else(
    serve, monkeypatch: pytest.MonkeyPatch, status: bytes
) -> None:
    """A redirect to another origin once carried `Authorization: Bearer ...` there, and its answer was used."""
    elsewhere = serve(answer(json.dumps(COMPLETION).encode()))
    server = serve(answer(b"", status, b"Location: " + elsewhere.url.encode() + b"/chat/completions\r\n"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    with pytest.raises(ModelNotAvailable, match="redirect") as caught:
        complete(OpenAICompatible(server.url, timeout=10))
    assert elsewhere.heads == []
    assert b"Authorization: Bearer sk-secret" in server.heads[0] and "sk-secret" not in str(caught.value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"choices": [{"message": {"content": "x"}}',  # invalid JSON: JSONDecodeError
        b"[1, 2]",  # a JSON list: AttributeError
        b'{"choices": "oops"}',  # AttributeError
        b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}}',  # ValueError
        b'{"choices": [{"message": "x"}]}',
        b'{"choices": []}',
        b"null",
        b"[" * 100_000,
    ],
    ids=[
        "invalid JSON",
        "list",
        "choices oops",
        "usage not a number",
        "message a string",
        "no choices",
        "null",
        "deep nesting",
    ],
)
def test_an_answer_that_is_no_chat_completion_is_a_clear_error(serve, body: bytes) -> None:
    server = serve(answer(body))
    with pytest.raises(ModelNotAvailable, match="did not answer with a chat completion"):
        complete(OpenAICompatible(server.url, timeout=10))


@pytest.mark.parametrize(
    "reply",
    [b"HELLO THERE\r\n\r\n", b"HTTP/1.1 OK\r\n\r\n", b"\x00\xff" * 100, b""],
    ids=["garbage status line", "no status code", "binary", "hang up"],
)
def test_a_server_that_does_not_speak_http_is_a_clear_error(serve, reply: bytes) -> None:
    server = serve(lambda server, conn: server.send(conn, reply))
    with pytest.raises(ModelNotAvailable, match="broke the exchange"):
        complete(OpenAICompatible(server.url, timeout=10))


def huge(declared: bool) -> Callable[[Server, socket.socket], None]:
    def respond(server: Server, conn: socket.socket) -> None:
        length = b"Content-Length: 200000000\r\n" if declared else b"Connection: close\r\n"
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + length + b"\r\n")
        block = b" " * 65536  # JSON allows this much whitespace before a value
        while server.sent < 200_000_000:
            server.send(conn, block)

    return respond


@pytest.mark.parametrize("declared", [True, False], ids=["Content-Length", "until close"])
def test_a_200_mb_answer_is_cut_off_and_never_held(serve, declared: bool) -> None:
    """A 200 MB body was read whole (822 MB peak RSS), three times over the retries."""
    server = serve(huge(declared))
    tracemalloc.start()
    try:
        with pytest.raises(ModelNotAvailable, match="bytes"):
            complete(OpenAICompatible(server.url, timeout=30))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MiB"  # the 8 MiB cap, and the chunk being read
    time.sleep(0.2)
    assert server.sent < 64 * 2**20 and len(server.heads) == 1  # reading stopped; no retry


def test_the_size_cap_is_an_option(serve) -> None:
    server = serve(answer(json.dumps({**COMPLETION, "padding": "x" * 100_000}).encode()))
    assert complete(OpenAICompatible(server.url)).text == '{"answer": "a dog"}'
    with pytest.raises(ModelNotAvailable, match="max_response_bytes=65536"):
        complete(OpenAICompatible(server.url, max_response_bytes=65536))


def test_an_error_status_shows_the_start_of_its_body_only(serve) -> None:
    server = serve(answer(b"E" * 5_000_000, b"500 Internal Server Error"))
    with pytest.raises(ModelNotAvailable, match="answered HTTP 500") as caught:
        complete(OpenAICompatible(server.url, timeout=10))
    assert len(str(caught.value)) < 500
    assert len(server.heads) == 2  # json_schema, then json_object: llama_cpp.server refuses the first with a 500


def drip(head: bytes, body: bytes, every: float) -> Callable[[Server, socket.socket], None]:
    """Send `head` at once, then `body` a byte at a time: each read is quick, the answer never ends."""

    def respond(server: Server, conn: socket.socket) -> None:
        server.send(conn, head)
        for byte in body:
            time.sleep(every)
            server.send(conn, bytes([byte]))

    return respond


@pytest.mark.parametrize(
    "respond",
    [
        drip(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b" " * 40, 0.25),
        drip(b"", b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 40, 0.25),
    ],
    ids=["body", "headers"],
)
def test_a_slow_drip_ends_at_the_timeout(serve, respond) -> None:
    """With timeout=1.0, one byte every 0.5 s held `observe` for 58.6 s."""
    server = serve(respond)
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="within the 1s timeout"):
        complete(OpenAICompatible(server.url, timeout=1.0))
    assert time.monotonic() - started < 2.0


def test_the_timeout_holds_across_retries(serve) -> None:
    def slow(server: Server, conn: socket.socket) -> None:
        time.sleep(0.4)
        answer(json.dumps(COMPLETION).encode())(server, conn)

    def refuse(raw: str) -> None:
        raise OutputRejected("never good enough")

    server = serve(slow)
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="within the 1s timeout"):
        complete(OpenAICompatible(server.url, timeout=1.0, retries=10), parse=refuse)
    assert time.monotonic() - started < 2.0 and len(server.heads) <= 4


def test_an_api_key_no_header_can_carry_is_refused_without_echoing_it(serve, monkeypatch) -> None:
    server = serve(answer(json.dumps(COMPLETION).encode()))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-line\nInjected: yes")
    with pytest.raises(ModelNotAvailable, match="API key") as caught:
        complete(OpenAICompatible(server.url))
    assert "sk-line" not in str(caught.value) and server.heads == []


# ---- the options, from Memory and the command line ----


def test_memory_passes_server_options_to_both_agents(serve, tmp_path: Path, tiny_embedder: Path) -> None:
    server = serve(answer(json.dumps(COMPLETION).encode()))
    options = {"timeout": 2.5, "max_response_bytes": 2**20, "api_key": "sk-option"}
    with Memory(tmp_path / "b.db", embedder=tiny_embedder, base_url=server.url, server_options=options) as mem:
        for llm in (mem.manager, mem.answerer):
            assert isinstance(llm, OpenAICompatible)
            assert (llm.timeout, llm.max_response_bytes, llm.api_key) == (2.5, 2**20, "sk-option")
        complete(mem.answerer)
    assert b"Authorization: Bearer sk-option" in server.heads[0]


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": "5"},
        {"timeout": True},
        {"timeout": float("nan")},
        {"max_response_bytes": 10},
        {"max_response_bytes": 2.5},
        {"api_key": ""},
        {"api_key": 5},
        {"retries": 3},
        [("timeout", 5)],
    ],
)
def test_bad_server_options_are_refused_before_the_bank_is_opened(tmp_path: Path, options: object) -> None:
    with pytest.raises(InvalidInput):
        Memory(tmp_path / "b.db", base_url="http://127.0.0.1:9/v1", server_options=options)
    assert not (tmp_path / "b.db").exists()


def test_server_options_need_a_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMR1_BASE_URL", raising=False)
    with pytest.raises(InvalidInput, match="base_url"):
        Memory(tmp_path / "b.db", server_options={"timeout": 5})
    with pytest.raises(InvalidInput, match="base_url"):
        OpenAICompatible("127.0.0.1:8000/v1")


def test_the_cli_takes_a_timeout(serve, tmp_path: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEMR1_BASE_URL", raising=False)
    server = serve(drip(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b" " * 40, 0.25))
    args = [
        "observe",
        "I adopted a dog.",
        "--db",
        str(tmp_path / "b.db"),
        "--embedder",
        str(tiny_embedder),
        "--base-url",
        server.url,
    ]
    started = time.monotonic()
    result = CliRunner().invoke(cli, [*args, "--timeout", "0.5"])
    assert result.exit_code == 1 and "ModelNotAvailable" in result.output and "0.5s timeout" in result.output
    assert time.monotonic() - started < 8
    result = CliRunner().invoke(cli, [*args[:-2], "--timeout", "0.5"])
    assert result.exit_code == 1 and "base_url" in result.output
