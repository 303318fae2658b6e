"""OpenAICompatible against a real llama_cpp.server on 127.0.0.1 serving the tiny test model."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from memr1 import Memory, ModelNotAvailable, ModelOutputError, prompts
from memr1.llm import OpenAICompatible

pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server]")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from memr1.tiny_models import write_chat_model

    model = write_chat_model(tmp_path_factory.mktemp("srv") / "chat.gguf", seed=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "4096",
            "--model_alias",
            "tiny",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(
                    f"llama_cpp.server did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}"
                )
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


def test_constrained_completion_through_the_server(server: str) -> None:
    llm = OpenAICompatible(server, "tiny", temperature=1.0)
    shown = prompts.shown_memories([(7, "Andrew has a dog.", None)])
    for seed in range(5):
        llm.seed = seed
        out = llm.complete(
            prompts.answer_messages("Pets?", memories=shown),
            prompts.ANSWER_SCHEMA,
            parse=lambda raw: prompts.parse_answer(raw, shown, [7]),
            max_tokens=200,
        )
        text, selected = out.value
        assert isinstance(text, str) and set(selected) <= {7}
        assert out.prompt_tokens > 0 and out.completion_tokens > 0
    assert llm._format in ("json_schema", "json_object")


def test_memory_observes_and_asks_through_the_server(server: str, tmp_path: Path, tiny_embedder: Path) -> None:
    with Memory(tmp_path / "b.db", embedder=tiny_embedder, base_url=server, manager="tiny", answerer="tiny") as mem:
        mem.add("Andrew adopted a dog named Buddy.", user="andrew")
        mem.observe("I adopted another dog, Scout!", speaker="Andrew", user="andrew")
        answer = mem.ask("How many dogs does Andrew have?", user="andrew")
        assert answer.retrieved >= 1 and answer.llm_calls == 1
        assert mem.usage["llm_calls"] == 2


def test_a_prompt_the_servers_context_cannot_hold_is_shrunk_to_fit(
    server: str, tmp_path: Path, tiny_embedder: Path, caplog
) -> None:
    """The server refuses the prompt (HTTP 400, context_length_exceeded); the Answer Agent shows fewer memories
    and asks again, as it does for a model in process."""
    with Memory(tmp_path / "b.db", embedder=tiny_embedder, base_url=server, answerer="tiny") as mem:
        for i in range(60):
            mem.add(f"Fact {i}: " + "Andrew walked his dog Buddy along the river on a sunny day. " * 6, user="andrew")
        with caplog.at_level(logging.INFO, logger="memr1.agents"):
            answer = mem.ask("Where does Andrew walk his dog?", user="andrew", k=60, sources="memories")
    assert answer.retrieved == 60 and answer.llm_calls >= 1
    assert any("exceeds 4096" in r.getMessage() for r in caplog.records)


def test_truncated_output_is_retried_then_refused_and_the_bank_is_unchanged(
    server: str, tmp_path: Path, tiny_embedder: Path
) -> None:
    llm = OpenAICompatible(server, "tiny", max_tokens=3, retries=1)  # every answer is cut mid-JSON
    with Memory(tmp_path / "b.db", embedder=tiny_embedder, manager=llm) as mem:
        mem.add("a fact")
        before = mem.stats()
        with pytest.raises(ModelOutputError, match="2 times"):
            mem.observe("a new turn")
        assert mem.stats() == before


def test_unreachable_server_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens here
    llm = OpenAICompatible(f"http://127.0.0.1:{port}/v1", timeout=2)
    with pytest.raises(ModelNotAvailable, match="cannot reach"):
        llm.complete([{"role": "user", "content": "hi"}], prompts.ANSWER_SCHEMA, parse=lambda r: r)
