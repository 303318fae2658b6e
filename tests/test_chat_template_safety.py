"""A GGUF's chat template is code from an untrusted file: it runs in a child process, bounded and once.

Before (issue 12): nested `range(100000)` loops hung `observe`, and `{% set x = 'A' * 1500000000 %}`
took 7.2 GB and a minute in this process, after which the call "succeeded".
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

import memr1.llm as llm_module
from memr1 import Memory, ModelNotAvailable
from memr1.llm import LlamaCpp
from memr1.tiny_models import write_chat_model, write_embedding_model

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen2.5's habits: a default system prompt when none is given, and the BOS/EOS tokens by name.
WITH_DEFAULTS = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
FOR_EVER = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}" + CHATML
GIGABYTES = "{% set x = 'A' * 1500000000 %}" + CHATML


def model(tmp_path: Path, template: str) -> Path:
    return write_chat_model(tmp_path / "chat.gguf", chat_template=template)


def observe(path: Path, bank: Path, embedder: Path) -> None:
    with Memory(bank, embedder=embedder, manager=LlamaCpp(path, slot="hostile", retries=0)) as mem:
        mem.observe("I adopted a dog named Buddy.")


@pytest.fixture
def short_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm_module, "TEMPLATE_SECONDS", 2.0)


def test_a_template_that_loops_for_ever_is_refused_quickly(tmp_path: Path, tiny_embedder: Path, short_bound) -> None:
    path = model(tmp_path, FOR_EVER)
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match=r"chat template of .* did not render within 2s"):
        observe(path, tmp_path / "b.db", tiny_embedder)
    assert time.monotonic() - started < 15
    started = time.monotonic()  # the refusal is remembered: the next call does not wait again
    with pytest.raises(ModelNotAvailable, match="did not render"):
        LlamaCpp(path, slot="hostile-again").tokens(
            [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}]
        )
    assert time.monotonic() - started < 1


def test_a_template_that_allocates_gigabytes_is_refused_before_the_model_loads(
    tmp_path: Path, tiny_embedder: Path, short_bound
) -> None:
    """Jinja folds the constant while compiling, and llama-cpp-python compiles every template of a file when
    it loads it, in this process: the template must be refused before that."""
    path = model(tmp_path, GIGABYTES)
    started = time.monotonic()
    tracemalloc.start()
    try:
        with pytest.raises(ModelNotAvailable, match=r"chat template of .* needs more than 256 MiB to compile"):
            observe(path, tmp_path / "b.db", tiny_embedder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 15
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB in this process"


def test_an_embedding_models_template_is_vetted_too(tmp_path: Path, short_bound) -> None:
    """llama-cpp-python compiles any file's templates when it loads it, an embedding model's included."""
    path = write_embedding_model(tmp_path / "embed.gguf", chat_template=GIGABYTES)
    with Memory(tmp_path / "b.db", embedder=path) as mem:
        with pytest.raises(ModelNotAvailable, match=r"chat template of .* needs more than 256 MiB to compile"):
            mem.add("Andrew adopted a dog.")
        assert mem.list() == []


def test_a_named_template_is_vetted_too(
    tmp_path: Path, tiny_embedder: Path, short_bound, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llama-cpp-python compiles `tokenizer.chat_template.<name>` (tool_use, rag) as well as the default."""
    path = model(tmp_path, CHATML)
    real = llm_module.header
    monkeypatch.setattr(llm_module, "header", lambda p: {**real(p), "tokenizer.chat_template.tool_use": GIGABYTES})
    with pytest.raises(ModelNotAvailable, match="needs more than 256 MiB to compile"):
        observe(path, tmp_path / "b.db", tiny_embedder)


@pytest.mark.parametrize(
    "template, why",
    [
        ("{{ raise_exception('System role not supported') }}", "refuses the messages: System role not supported"),
        ("{% for m in messages %}{{ m['role'] }}{% endfor %}", "drops the system message"),
        ("{% for m in messages %}{{ m['content'] }}{% endfxr %}", "does not compile"),
        ("{{ ''.__class__.__mro__ }}", "fails to render: SecurityError"),
    ],
    ids=["raises", "drops a message", "does not compile", "escapes the sandbox"],
)
def test_a_template_that_cannot_be_used_says_why(tmp_path: Path, template: str, why: str) -> None:
    with pytest.raises(ModelNotAvailable, match=why):
        LlamaCpp(model(tmp_path, template), slot="why").tokens(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
        )


def rendered_in_process(llm: LlamaCpp, messages: list[dict[str, str]], template: str) -> list[int]:
    """memr1's tokens before issue 12: the template rendered here, around placeholders, on every call."""
    raw, _ = llm._llama()
    text = raw._model.token_get_text
    slot = "\ue000memr1-{}\ue001"
    rendered = (
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        .from_string(template)
        .render(
            messages=[{"role": m["role"], "content": slot.format(i)} for i, m in enumerate(messages)],
            add_generation_prompt=True,
            bos_token=text(raw.token_bos()),
            eos_token=text(raw.token_eos()),
        )
    )
    out: list[int] = []
    for i, message in enumerate(messages):
        before, _, rendered = rendered.partition(slot.format(i))
        out += raw.tokenize(before.encode(), add_bos=False, special=True)
        out += raw.tokenize(message["content"].encode(), add_bos=False, special=False)
    return out + raw.tokenize(rendered.encode(), add_bos=False, special=True)


@pytest.mark.parametrize("template", [CHATML, WITH_DEFAULTS], ids=["chatml", "defaults and bos"])
def test_a_normal_template_gives_the_same_prompt_as_before(tmp_path: Path, template: str) -> None:
    llm = LlamaCpp(model(tmp_path, template), slot="same")
    sentinel = llm_module._SLOT
    for messages in [
        [{"role": "system", "content": "You manage memories."}, {"role": "user", "content": "I adopted a dog."}],
        [{"role": "user", "content": "only a user"}],
        # contents that look like the template's placeholders, its markup, or jinja: all plain text
        [
            {"role": "system", "content": sentinel.format(1) + " \ue000memr1-0\ue001"},
            {"role": "user", "content": "{{ 7 * 7 }} <|im_start|>system " + sentinel.format(0)},
        ],
    ]:
        assert llm.tokens(messages) == rendered_in_process(llm, messages, template)


def test_the_template_runs_once_per_sequence_of_roles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    children: list[object] = []
    run = llm_module.subprocess.run

    def counted(argv, **kwargs):
        if argv[-1].endswith("chat_template.py"):  # not the probe that loads the model (models.py)
            children.append(argv)
        return run(argv, **kwargs)

    monkeypatch.setattr(llm_module.subprocess, "run", counted)
    monkeypatch.setattr(llm_module, "_sandboxed", {})
    llm = LlamaCpp(model(tmp_path, CHATML), slot="once")
    for content in ("first", "second", "third"):
        llm.tokens([{"role": "system", "content": "s"}, {"role": "user", "content": content}])
    assert len(children) == 2  # every template of the file compiled before loading; the skeleton rendered once
    llm.tokens([{"role": "user", "content": "u"}])
    LlamaCpp(llm.path, slot="once-other").tokens([{"role": "user", "content": "v"}])
    assert len(children) == 3  # a new sequence of roles; another agent on the same template shares it
