"""A scripted LLM for deterministic tests of agent behaviour. Never a default backend."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from .llm import Completion, retry_until_parsed


class ScriptedLLM:
    """Replays scripted replies at the LLM boundary, through the same parse-and-retry path as real backends.

    `script` is a list of replies (a dict is sent as JSON, a str verbatim), consumed in order, or
    a function of the messages returning one. Each reply counts its characters as tokens.
    """

    def __init__(self, script: Sequence[Any] | Callable[[Sequence[dict[str, str]]], Any], *, retries: int = 2) -> None:
        self.script = script if callable(script) else list(script)
        self.retries = retries
        self.calls: list[Sequence[dict[str, str]]] = []

    def _next(self, messages: Sequence[dict[str, str]]) -> str:
        self.calls.append(messages)
        reply = self.script(messages) if callable(self.script) else self.script.pop(0)
        return reply if isinstance(reply, str) else json.dumps(reply)

    def complete(
        self,
        messages: Sequence[dict[str, str]],
        schema: dict[str, Any],
        *,
        parse: Callable[[Any], Any],
        max_tokens: int = 512,
    ) -> Completion:
        def attempt(i: int) -> tuple[str, int, int]:
            text = self._next(messages)
            return text, sum(len(m["content"]) for m in messages), len(text)

        return retry_until_parsed("scripted", self.retries, attempt, parse)


def prompt_data(messages: Sequence[dict[str, str]], label: str) -> Any:
    """The JSON data a prompt quotes between `<<<LABEL` and `LABEL>>>`: what a scripted model reads."""
    content = messages[-1]["content"]
    return json.loads(content.split(f"<<<{label}\n", 1)[1].split(f"\n{label}>>>", 1)[0])
