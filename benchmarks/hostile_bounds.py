"""Issue 12 items 6-7: what a misbehaving server or a hostile chat template costs one call.

Each case runs in a fresh child process, so its peak RSS is its own, and is killed after --cap seconds.
Run it with the memr1 to measure first on PYTHONPATH:

    python -m benchmarks.hostile_bounds --cap 120 [CASE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PAD = 200_000_000  # bytes of JSON whitespace after a valid completion: 200 MB
REPLY = b'{"choices": [{"message": {"content": "{}"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
TEMPLATES = {
    "template_chatml": "",
    "template_loops": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "template_1_5_gb": "{% set x = 'A' * 1500000000 %}",
}
CASES = ["server_200_mb", "server_200_mb_unsized", "server_slow_drip", *TEMPLATES]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _server(respond) -> str:
    listener = socket.create_server(("127.0.0.1", 0))

    def handle(conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head)[1])
            while len(body) < length:  # all of it: closing on unread bytes would reset the connection
                body += conn.recv(65536)
            try:
                respond(conn)
            except OSError:
                pass

    def serve() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


def _huge(conn: socket.socket, sized: bool = True) -> None:
    length = b"Content-Length: %d" % (len(REPLY) + PAD) if sized else b"Connection: close"  # then: until it closes
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + length + b"\r\n\r\n" + REPLY)
    block = b" " * 65536
    for _ in range(PAD // len(block)):
        conn.sendall(block)
    conn.sendall(b" " * (PAD % len(block)))


def _drip(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(REPLY))
    for byte in REPLY:  # one byte every 0.5 s: each read well within the timeout, the answer takes a minute
        time.sleep(0.5)
        conn.sendall(bytes([byte]))


def case(name: str) -> dict[str, object]:
    """One call, in this process; what it raised, or that it returned."""
    from memr1 import prompts
    from memr1.llm import LlamaCpp, OpenAICompatible
    from memr1.prompts import OutputRejected

    def refuse(raw: str) -> None:
        raise OutputRejected("unusable")  # as a model's bad output would be: retried

    llm: LlamaCpp | OpenAICompatible
    if name.startswith("server_200_mb"):
        respond = _huge if name == "server_200_mb" else lambda conn: _huge(conn, sized=False)
        llm, parse = OpenAICompatible(_server(respond), timeout=120.0), refuse
    elif name == "server_slow_drip":
        llm, parse = OpenAICompatible(_server(_drip), timeout=1.0), (lambda raw: raw)
    else:
        from memr1.tiny_models import write_chat_model

        path = write_chat_model(Path(tempfile.mkdtemp()) / "chat.gguf", chat_template=TEMPLATES[name] + CHATML)
        llm, parse = LlamaCpp(path, retries=0, max_tokens=8), (lambda raw: raw)
    if name == "template_chatml":  # what the bounds cost a normal template
        return _overhead(llm)
    started = time.perf_counter()
    try:
        llm.complete(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}], prompts.ANSWER_SCHEMA, parse=parse
        )
        outcome = "returned"
    except Exception as e:
        outcome = f"{type(e).__module__}.{type(e).__name__}: {str(e)[:120]}"
    return {"seconds": round(time.perf_counter() - started, 2), "outcome": outcome}


def _overhead(llm) -> dict[str, object]:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    started = time.perf_counter()
    if hasattr(llm, "_vet_templates"):
        llm._vet_templates()  # compile the file's templates in the child, before the model loads
    vetted = time.perf_counter()
    llm._llama()
    loaded = time.perf_counter()
    llm.tokens(messages)  # the first call renders the template
    first = time.perf_counter()
    for _ in range(100):
        llm.tokens(messages)
    later = (time.perf_counter() - first) / 100
    return {
        "seconds": round(first - started, 2),
        "outcome": f"vetting {vetted - started:.3f}s, first tokens() "
        f"{first - loaded:.3f}s, later tokens() {later * 1000:.2f} ms",
    }


def _rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="*", default=CASES, help=f"of {', '.join(CASES)} (default: all)")
    parser.add_argument("--cap", type=float, default=120.0, help="kill a case after this many seconds")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args()
    if args.case:
        import resource

        import memr1.llm  # noqa: F401 - imports before the baseline, as in an application

        baseline = _rss_kib()
        out = case(args.case)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(
            json.dumps({**out, "peak_rss_mb": round(peak / 1024), "above_baseline_mb": round((peak - baseline) / 1024)})
        )
        return
    env = {**os.environ, "MEMR1_CACHE_DIR": tempfile.mkdtemp()}  # probe every file afresh (unless MEMR1_PROBE=0)
    for name in args.cases:
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.hostile_bounds", "--case", name],
                env=env,
                capture_output=True,
                text=True,
                timeout=args.cap,
            )
            result = (
                json.loads(done.stdout.strip().splitlines()[-1])
                if done.returncode == 0
                else {"outcome": f"child died ({done.returncode}): {done.stderr.strip()[-200:]}"}
            )
        except subprocess.TimeoutExpired:
            result = {"outcome": f"still running after {args.cap:g}s: killed"}
        print(json.dumps({"case": name, "wall_s": round(time.perf_counter() - started, 1), **result}), flush=True)


if __name__ == "__main__":
    main()
