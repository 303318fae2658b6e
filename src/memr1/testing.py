"""memr1's public test double: a scripted backend for deterministic tests of agent behaviour.

Never a default backend; nothing in memr1 uses it unless a caller passes it in."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from .llm import ChatBackend, Generation, Request


class ScriptedLLM(ChatBackend):
    """The public test double for memr1's LLM roles: scripted outputs through the real parsing path.

    It stands where a model would (`Memory(..., manager=..., answerer=...)` take any backend) and
    replays scripted replies from `generate`, the one method a backend implements. Everything above
    it is memr1's own: each reply reaches the real parser (`memr1.prompts.parse_manager`,
    `parse_answer`, ...) through the agents' retry loop, so a malformed reply is asked again, then
    raises `ModelOutputError`, as a model's would. So tests of your own code can drive `observe`
    and `ask` without a chat model.

    `script` is a list of replies (a dict is sent as JSON, a str verbatim), consumed in order, or
    a function of the messages returning one. Each reply counts its characters as tokens. `calls`
    keeps the messages of every call; `prompt_data(messages, "LABEL")` reads the data they quote.

        from memr1 import Memory
        from memr1.testing import ScriptedLLM

        manager = ScriptedLLM([{"facts": [{"fact": "Andrew adopted a dog named Buddy.", "event": "ADD"}]}])
        with Memory("test.db", manager=manager) as mem:
            mem.observe("I adopted a dog named Buddy.", speaker="Andrew", user="andrew")
    """

    def __init__(self, script: Sequence[Any] | Callable[[Sequence[dict[str, str]]], Any], *, retries: int = 2) -> None:
        super().__init__(retries=retries)
        self.script = script if callable(script) else list(script)
        self.calls: list[Sequence[dict[str, str]]] = []

    def generate(self, request: Request) -> Generation:
        self.calls.append(request.messages)
        reply = self.script(request.messages) if callable(self.script) else self.script.pop(0)
        text = reply if isinstance(reply, str) else json.dumps(reply)
        return Generation(text, sum(len(m["content"]) for m in request.messages), len(text))

    def __repr__(self) -> str:
        return "scripted"


def prompt_data(messages: Sequence[dict[str, str]], label: str) -> Any:
    """The JSON data a prompt quotes between `<<<LABEL` and `LABEL>>>`: what a scripted model reads."""
    content = messages[-1]["content"]
    return json.loads(content.split(f"<<<{label}\n", 1)[1].split(f"\n{label}>>>", 1)[0])
