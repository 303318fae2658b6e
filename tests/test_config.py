"""One configuration, one rule: the value given, else the environment, else the default (memr1.config)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from memr1 import BankBusy, InvalidInput, datasets, models
from memr1.cli import cli
from memr1.config import AgentConfig, Config, chat_backend, default_threads
from memr1.llm import DEFAULT_CHAT_MODEL, DEFAULT_TIMEOUT, LlamaCpp, OpenAICompatible
from memr1.store import Store
from memr1.tiny_models import write_embedding_model

SERVER = "http://127.0.0.1:9/v1"


@pytest.fixture(autouse=True)
def no_memr1_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("MEMR1_") and name != "MEMR1_SQLITE_DRIVER":
            monkeypatch.delenv(name)


# (what the dict holds, the variable, its value, what Config holds then, what the dict gives, the default)
PRECEDENCE: dict[str, tuple[dict[str, Any], str, str, Any, Any, Any]] = {
    "embedder": ({"embedder": "arg.gguf"}, "MEMR1_EMBEDDER", "env.gguf", "env.gguf", "arg.gguf", None),
    "manager.model": ({"manager": "arg.gguf"}, "MEMR1_MANAGER", "env.gguf", "env.gguf", "arg.gguf", None),
    "answerer.model": ({"answerer": {"model": "arg.gguf"}}, "MEMR1_ANSWERER", "env.gguf", "env.gguf", "arg.gguf", None),
    "base_url": (
        {"base_url": "http://arg:1/v1"},
        "MEMR1_BASE_URL",
        "http://env:1/v1",
        "http://env:1/v1",
        "http://arg:1/v1",
        None,
    ),
    "embedder_threads": ({"embedder_threads": 2}, "MEMR1_EMBEDDER_THREADS", "3", 3, 2, 1),
    "embedder_threads (all)": ({"threads": 2}, "MEMR1_THREADS", "3", 3, 2, 1),
    "manager.threads": ({"manager": {"threads": 2}}, "MEMR1_MANAGER_THREADS", "3", 3, 2, default_threads("manager")),
    "answerer.threads": (
        {"threads": {"answerer": 2}},
        "MEMR1_ANSWERER_THREADS",
        "3",
        3,
        2,
        default_threads("answerer"),
    ),
    "answerer.threads (all)": ({"answerer": {"threads": 2}}, "MEMR1_THREADS", "3", 3, 2, default_threads("answerer")),
    "busy_timeout": ({"busy_timeout": 5}, "MEMR1_BUSY_TIMEOUT", "7.5", 7.5, 5.0, 30.0),
    "cache_dir": ({"cache_dir": "/arg"}, "MEMR1_CACHE_DIR", "/env", Path("/env"), Path("/arg"), None),
}


def setting(config: Config, name: str) -> Any:
    value: Any = config
    for part in name.split(" ")[0].split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("name", PRECEDENCE)
def test_the_value_given_beats_the_environment_which_beats_the_default(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    given, variable, raw, from_env, from_given, default = PRECEDENCE[name]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert setting(Config.load(), name) == (tmp_path / "memr1" if name == "cache_dir" else default)
    monkeypatch.setenv(variable, raw)
    assert setting(Config.load(), name) == from_env
    assert setting(Config.load(given), name) == from_given


def test_related_k_has_no_variable() -> None:
    assert Config.load().related_k == 10
    assert Config.load({"related_k": 3}).related_k == 3


def test_the_environment_passed_is_the_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMR1_MANAGER", "process.gguf")
    assert Config.load(environ={"MEMR1_MANAGER": "given.gguf"}).manager.model == "given.gguf"
    assert Config.load(environ={}).manager.model is None


@pytest.mark.parametrize("unset", [None, ""])
def test_none_or_empty_means_not_given_so_the_environment_applies(unset: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Memory(manager=None) has always meant: not chosen."""
    monkeypatch.setenv("MEMR1_MANAGER", "env.gguf")
    monkeypatch.setenv("MEMR1_EMBEDDER", "env-embed.gguf")
    monkeypatch.setenv("MEMR1_BASE_URL", "")  # an empty variable is unset too
    config = Config.load({"manager": unset, "embedder": unset, "base_url": unset})
    assert (config.manager.model, config.embedder, config.base_url) == ("env.gguf", "env-embed.gguf", None)


def test_the_dict_form() -> None:
    config = Config.load(
        {
            "manager": {"model": "x.gguf", "threads": 2, "n_gpu_layers": 10},
            "answerer": "y.gguf",
            "embedder": "e.gguf",
            "busy_timeout": 5,
        }
    )
    assert config.manager == AgentConfig(model="x.gguf", threads=2, n_gpu_layers=10)
    assert config.answerer == AgentConfig(model="y.gguf", threads=default_threads("answerer"))
    assert (config.embedder, config.embedder_threads, config.busy_timeout) == ("e.gguf", 1, 5.0)
    assert Config.load({"manager": AgentConfig(model="x.gguf", seed=3)}).manager.seed == 3
    assert Config.load({"manager": Path("m.gguf")}).manager.model == "m.gguf"


def test_threads_serve_only_the_models_run_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMR1_THREADS", "3")
    monkeypatch.setenv("MEMR1_BASE_URL", SERVER)
    config = Config.load({"threads": 2, "answerer": {"model": "a.gguf", "base_url": None}})
    assert (config.embedder_threads, config.manager.threads, config.answerer.threads) == (2, None, None)
    local = Config.load({"threads": 2, "manager": {"threads": 4}}, environ={})
    assert (local.embedder_threads, local.manager.threads, local.answerer.threads) == (2, 4, 2)
    with pytest.raises(InvalidInput, match=r"manager: threads is an option of llama.cpp .* server at http"):
        Config.load({"manager": {"threads": 4}})  # asked for by name, for an agent on $MEMR1_BASE_URL


def test_an_agents_own_server_beats_the_shared_one() -> None:
    config = Config.load({"base_url": SERVER, "answerer": {"base_url": "http://other:8000/v1", "model": "qwen"}})
    answerer = config.backend("answerer")
    assert isinstance(answerer, OpenAICompatible) and answerer.base_url == "http://other:8000/v1"
    assert isinstance(config.backend("manager"), OpenAICompatible)
    assert config.backend("manager").base_url == SERVER  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"busy_timeout": -1}, "busy_timeout must be a number from 0 to 86400 seconds, got -1"),
        ({"busy_timeout": "5"}, "busy_timeout must be a number"),
        ({"related_k": True}, "related_k must be an int from 0 to 1000"),
        ({"embedder_threads": 0}, "embedder_threads must be an int from 1 to 1024"),
        ({"threads": {"reranker": 1}}, "threads names unknown roles"),
        ({"manager": {"threads": 2.5}}, "manager.threads must be an int from 1 to 1024"),
        ({"answerer": {"n_ctx": 100}}, "answerer.n_ctx must be an int of at least 512 tokens"),
        ({"answerer": {"max_tokens": 0}}, "answerer.max_tokens must be an int from 1"),
        ({"manager": {"temperature": "hot"}}, "manager.temperature must be a number from 0 to 2"),
        ({"manager": {"n_gpu_layers": -2}}, "manager.n_gpu_layers must be an int"),
        ({"manager": {"retries": -1}}, "manager.retries must be an int from 0 to 100"),
        ({"base_url": SERVER, "manager": {"timeout": 0}}, "manager.timeout must be a number of seconds above 0"),
        ({"base_url": "ftp://host/v1"}, "base_url must be an http:// or https:// address"),
        ({"manager": 5}, "manager must be a model reference, a mapping of its settings or an AgentConfig"),
        ({"embedder": "bad\x00ref"}, "embedder must be a model path"),
        ({"cache_dir": 3}, "cache_dir must be a directory path"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(values: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        Config.load(values)
    assert says in str(refused.value)
    assert type(refused.value) is InvalidInput  # never pydantic's ValidationError, nor a subclass to catch apart


def test_unknown_settings_are_refused_naming_the_known_ones() -> None:
    with pytest.raises(InvalidInput, match=r"unknown settings \['colour'\]; known: embedder, .*, threads"):
        Config.load({"colour": "blue"})
    with pytest.raises(InvalidInput, match=r"unknown manager settings \['gpu'\]; known: model, base_url, threads"):
        Config.load({"manager": {"gpu": 1}})
    with pytest.raises(InvalidInput, match="unknown settings"):
        AgentConfig(gpu=1)  # type: ignore[call-arg]
    with pytest.raises(InvalidInput, match=r"manager.threads must be .*; unknown manager settings \['gpu'\]"):
        Config(manager={"threads": 0, "gpu": 1})  # type: ignore[arg-type]


def test_an_api_key_is_never_repeated() -> None:
    with pytest.raises(InvalidInput) as refused:
        Config.load({"base_url": SERVER, "manager": {"api_key": "sk-secret\n"}})
    assert "sk-secret" not in str(refused.value)
    assert "sk-secret" not in repr(AgentConfig(api_key="sk-secret"))


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("MEMR1_BUSY_TIMEOUT", "soon"),
        ("MEMR1_BUSY_TIMEOUT", "inf"),
        ("MEMR1_MANAGER_THREADS", "0"),
        ("MEMR1_THREADS", "many"),
        ("MEMR1_BASE_URL", "localhost:8000"),
    ],
)
def test_a_bad_variable_is_refused_by_its_name(variable: str, raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(InvalidInput, match=rf"\${variable} must be"):
        Config.load()


def test_a_bad_variable_is_not_read_when_a_value_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMR1_BUSY_TIMEOUT", "soon")
    monkeypatch.setenv("MEMR1_MANAGER_THREADS", "many")
    config = Config.load({"busy_timeout": 1, "manager": {"threads": 1}})
    assert (config.busy_timeout, config.manager.threads) == (1.0, 1)


# ---- the cache directory: one root for probe verdicts, data sets and benchmark embeddings ----


def test_models_and_datasets_share_memr1_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(tmp_path / "cache"))
    assert datasets.cache_dir() == tmp_path / "cache"
    model = write_embedding_model(tmp_path / "fresh.gguf", dim=32, seed=11)  # a file this process never probed
    models.probe(model, embedding=True)
    assert len(list((tmp_path / "cache" / "probed").iterdir())) == 1  # its verdict, where the data sets go


def test_memr1_cache_still_works_with_a_deprecation_warning(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMR1_CACHE", str(tmp_path / "old"))
    with pytest.warns(DeprecationWarning, match=r"\$MEMR1_CACHE is deprecated: set \$MEMR1_CACHE_DIR"):
        assert datasets.cache_dir() == tmp_path / "old"
    monkeypatch.setenv("MEMR1_CACHE_DIR", str(tmp_path / "new"))
    with pytest.warns(DeprecationWarning, match="ignored"):
        assert datasets.cache_dir() == tmp_path / "new"
    with pytest.warns(DeprecationWarning):
        assert Config.load().cache_dir == tmp_path / "new"


# ---- one chat-backend factory ----


def test_chat_backend_runs_in_process_with_the_options_set() -> None:
    agent = AgentConfig(
        model="m.gguf",
        threads=2,
        n_gpu_layers=10,
        n_ctx=1024,
        max_ctx=2048,
        max_tokens=64,
        seed=7,
        temperature=0.5,
        retries=1,
    )
    llm = chat_backend(agent, role="manager")
    assert isinstance(llm, LlamaCpp)
    assert (llm.ref, llm.slot, llm.n_threads, llm.n_gpu_layers, llm.n_ctx, llm.max_ctx) == (
        "m.gguf",
        "manager",
        2,
        10,
        1024,
        2048,
    )
    assert (llm.max_tokens, llm.seed, llm.temperature, llm.retries) == (64, 7, 0.5, 1)


def test_chat_backend_leaves_the_backends_defaults_alone() -> None:
    llm = chat_backend(AgentConfig(), role="answerer")
    reference = LlamaCpp(slot="answerer")
    assert isinstance(llm, LlamaCpp) and llm.ref == DEFAULT_CHAT_MODEL
    assert {k: v for k, v in vars(llm).items() if not k.startswith("_")} == {
        k: v for k, v in vars(reference).items() if not k.startswith("_")
    }
    server = chat_backend(AgentConfig(), role="answerer", base_url=SERVER)
    assert isinstance(server, OpenAICompatible)
    assert (server.model, server.timeout, server.retries, server.api_key_env) == (
        "default",
        DEFAULT_TIMEOUT,
        2,
        "OPENAI_API_KEY",
    )


def test_chat_backend_talks_to_a_server_with_the_options_set() -> None:
    agent = AgentConfig(
        model="qwen",
        timeout=5,
        max_response_bytes=4096,
        api_key="sk-test",
        api_key_env="MY_KEY",
        seed=3,
        temperature=0.2,
        retries=0,
        max_tokens=32,
    )
    llm = chat_backend(agent, role="manager", base_url=SERVER)
    assert isinstance(llm, OpenAICompatible)
    assert (llm.base_url, llm.model, llm.timeout, llm.max_response_bytes) == (SERVER, "qwen", 5.0, 4096)
    assert (llm.api_key, llm.api_key_env, llm.seed, llm.temperature, llm.retries, llm.max_tokens) == (
        "sk-test",
        "MY_KEY",
        3,
        0.2,
        0,
        32,
    )
    own = chat_backend(AgentConfig(base_url="http://own:1/v1"), role="manager", base_url=SERVER)
    assert isinstance(own, OpenAICompatible) and own.base_url == "http://own:1/v1"


@pytest.mark.parametrize(
    ("agent", "base_url", "says"),
    [
        (AgentConfig(n_gpu_layers=10), SERVER, "n_gpu_layers is an option of llama.cpp in this process"),
        (AgentConfig(base_url=SERVER, threads=2, n_ctx=1024), None, "threads, n_ctx are options of llama.cpp"),
        (AgentConfig(timeout=5), None, "timeout is an option of an OpenAI-compatible server, but the manager has no"),
        (AgentConfig(api_key="k", max_response_bytes=4096), None, "max_response_bytes, api_key are options of an"),
    ],
)
def test_options_of_the_other_backend_are_refused(agent: AgentConfig, base_url: str | None, says: str) -> None:
    with pytest.raises(InvalidInput, match=says):
        chat_backend(agent, role="manager", base_url=base_url)
    with pytest.raises(InvalidInput, match=says):
        Config.load({"manager": agent, "base_url": base_url})


def test_chat_backend_takes_an_agent_config() -> None:
    with pytest.raises(InvalidInput, match="AgentConfig"):
        chat_backend({"model": "m.gguf"}, role="manager")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="base_url must be an http"):
        chat_backend(AgentConfig(), role="manager", base_url="127.0.0.1:8000")


# ---- the store: seconds, as everywhere ----


def test_store_busy_timeout_is_seconds(tmp_path: Path) -> None:
    assert Store(tmp_path / "a.db", busy_timeout=0.5).conn.execute("PRAGMA busy_timeout").fetchone()[0] == 500
    assert Store(tmp_path / "b.db").conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000
    with pytest.warns(DeprecationWarning, match="busy_timeout_ms"):
        old = Store(tmp_path / "c.db", busy_timeout_ms=1500)
    assert (old.busy_timeout, old.conn.execute("PRAGMA busy_timeout").fetchone()[0]) == (1.5, 1500)


@pytest.mark.parametrize("bad", [-1, 90_000, True, "5"])
def test_store_refuses_a_bad_busy_timeout_before_creating_the_file(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(InvalidInput, match="busy_timeout must be a number from 0 to 86400 seconds"):
        Store(tmp_path / "bank.db", busy_timeout=bad)
    assert not (tmp_path / "bank.db").exists()


def test_store_takes_one_busy_timeout(tmp_path: Path) -> None:
    with pytest.warns(DeprecationWarning), pytest.raises(InvalidInput, match="not both"):
        Store(tmp_path / "bank.db", busy_timeout=1, busy_timeout_ms=1000)


def test_a_writer_waits_busy_timeout_seconds_then_gets_bank_busy(tmp_path: Path) -> None:
    holder, waiter = Store(tmp_path / "bank.db"), Store(tmp_path / "bank.db", busy_timeout=0.2)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.write():
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        held.wait(10)
        with pytest.raises(BankBusy, match=r"for 0.2s"), waiter.write():
            pass
    finally:
        release.set()
        thread.join()


# ---- the CLI passes what was typed; the environment is the library's ----


def test_the_cli_applies_the_environment_as_the_library_does(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMR1_BASE_URL", "localhost:8000")
    result = CliRunner().invoke(cli, ["demo", "--tiny"])
    assert result.exit_code == 1 and "$MEMR1_BASE_URL must be an http:// or https:// address" in result.output


def test_memory_from_config_passes_per_agent_options(tmp_path: Path, tiny_embedder: Path, tiny_chat: Path) -> None:
    from memr1 import LlamaCpp, Memory

    config = {
        "path": str(tmp_path / "b.db"),
        "embedder": str(tiny_embedder),
        "manager": {"model": str(tiny_chat), "threads": 1, "max_ctx": 1024, "retries": 0},
        "answerer": str(tiny_chat),
        "related_k": 3,
        "busy_timeout": 0.5,
    }
    with Memory.from_config(config) as mem:
        assert isinstance(mem.manager, LlamaCpp) and isinstance(mem.answerer, LlamaCpp)
        assert (mem.manager.n_threads, mem.manager.max_ctx, mem.manager.retries) == (1, 1024, 0)
        assert mem.related_k == 3 and mem.store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 500
        mem.add("Andrew adopted a dog named Buddy.")
    with pytest.raises(InvalidInput, match="path"):
        Memory.from_config({"embedder": str(tiny_embedder)})


def test_memory_reads_the_environment_through_config(
    tmp_path: Path, tiny_embedder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memr1 import Memory

    monkeypatch.setenv("MEMR1_BUSY_TIMEOUT", "0.25")
    monkeypatch.setenv("MEMR1_ANSWERER", "from-env.gguf")
    with Memory(tmp_path / "b.db", embedder=tiny_embedder, answerer="given.gguf") as mem:
        assert mem.store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 250
        assert mem.answerer.ref == "given.gguf" and mem.manager.ref != "from-env.gguf"
    with Memory(tmp_path / "b.db", embedder=tiny_embedder, busy_timeout=2) as mem:
        assert mem.store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2000
        assert mem.answerer.ref == "from-env.gguf"
    with pytest.raises(InvalidInput, match="not both"):
        Memory(tmp_path / "b.db", config={"busy_timeout": 1}, threads=2)
