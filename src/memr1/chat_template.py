"""A GGUF's chat templates, compiled and rendered in a child process that bounds its own time and memory.

A chat template is code from an untrusted file. Jinja's sandbox keeps it away from Python's
internals, but not from looping for hours (nested `range(100000)`) or allocating gigabytes
(`'A' * 1500000000`, even while compiling). `LlamaCpp` runs this file as a script
(`python -I chat_template.py`) with the job on stdin; the answer is one JSON object on stdout.
It imports nothing from memr1, so the child starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from typing import Any


class _Raised(Exception):
    """The template called raise_exception(): it refuses these messages."""


def run(job: dict[str, Any]) -> str:
    """Compile every template in `job["templates"]` and, given `job["messages"]`, render the first over them.

    ValueError says why a template cannot be used; MemoryError passes. The templates besides the first are
    the file's named ones (tool_use, rag): llama-cpp-python compiles them all when it loads the model."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise _Raised(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    compiled = []
    for source in job["templates"]:
        try:
            compiled.append(_compile(env, source))
        except MemoryError:
            raise
        except Exception as e:
            raise ValueError(f"does not compile: {e}") from None
    if "messages" not in job:
        return ""
    try:
        rendered = compiled[0].render(
            messages=job["messages"],
            add_generation_prompt=True,
            bos_token=job["bos"],
            eos_token=job["eos"],
            raise_exception=raise_exception,
        )
    except _Raised as e:
        raise ValueError(f"refuses the messages: {e}") from None
    except MemoryError:
        raise
    except Exception as e:  # the sandbox's SecurityError, a RecursionError, a template's own bug
        raise ValueError(f"fails to render: {type(e).__name__}: {e}") from None
    if len(rendered) > job["max_chars"]:
        raise ValueError(f"renders {len(rendered)} characters of markup (at most {job['max_chars']} are taken)")
    return rendered


def _compile(env: Any, source: str) -> Any:
    """Compiling folds constant expressions, and jinja gives up on a fold that raises, MemoryError included.
    Here that is the memory limit speaking; unbounded, in the process that loads the model, the fold of
    'A' * 1500000000 succeeds and the string is written into generated code (gigabytes, a minute). So a
    MemoryError anywhere in the compile refuses the template, even one jinja caught."""
    ran_out = False

    def watch(frame: Any, event: str, arg: Any) -> Any:
        nonlocal ran_out
        frame.f_trace_lines = False  # exceptions only: a tenth of a second on the longest real templates
        if event == "exception" and issubclass(arg[0], MemoryError):
            ran_out = True
        return watch

    sys.settrace(watch)
    try:
        compiled = env.from_string(source)
    finally:
        sys.settrace(None)
    if ran_out:
        raise MemoryError
    return compiled


def _limit(seconds: float, memory: int) -> None:
    """CPU time and address space for the rest of this process: what the interpreter and jinja2 already
    map, plus `memory` bytes. The parent's wall-clock timeout holds where these limits do not (Windows)."""
    try:
        import resource
    except ImportError:
        return
    with contextlib.suppress(ValueError, OSError):  # CPU time ends the child even if its parent died
        cpu = math.ceil(seconds) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return  # not Linux: macOS does not enforce RLIMIT_AS anyway
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (mapped + memory, mapped + memory))


def main() -> None:
    job = json.loads(sys.stdin.read())
    sys.path[:] = job["path"]  # -I left out $PYTHONPATH and user site-packages: import jinja2 from where the parent did
    import jinja2.sandbox  # noqa: F401 - loaded before the limits, which are for the template alone

    _limit(job["seconds"], job["memory"])
    try:
        out = {"rendered": run(job)}
    except ValueError as e:
        out = {"error": str(e)[:500]}
    except MemoryError:
        out = {"error": f"needs more than {job['memory'] >> 20} MiB to {'render' if 'messages' in job else 'compile'}"}
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
