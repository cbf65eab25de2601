"""A small OpenAI-compatible chat-completions server on 127.0.0.1 for tests of the ``openai`` backend.

It stands in for vLLM/TGI/llama.cpp's server (which cannot run in the test budget here) and implements the part of
``POST /v1/chat/completions`` the client uses, plus the failure modes a real deployment shows: 429 with
``Retry-After``, 503, responses slower than the client's timeout, and degenerate text. The reply is a deterministic
sentence built from the prompt's facts, so tests can check which prompt an answer belongs to.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Behaviour:
    def __init__(self, n_429: int = 0, n_503: int = 0, slow_first: int = 0, slow_s: float = 0.0,
                 degenerate_marker: str | None = None, always_degenerate_marker: str | None = None,
                 status_always: int | None = None, raw_body: str | None = None, echo_key: bool = False,
                 ok_first: int = 0) -> None:
        """``raw_body``: answer 200 with this text (not a chat completion); ``echo_key``: answer 401 with a body
        that repeats the Authorization header (as some gateways do); ``ok_first``: the first N requests are
        answered normally before ``status_always``/``raw_body``/``echo_key`` apply."""
        self.n_429, self.n_503, self.slow_first, self.slow_s = n_429, n_503, slow_first, slow_s
        self.degenerate_marker, self.always_degenerate_marker = degenerate_marker, always_degenerate_marker
        self.status_always, self.raw_body, self.echo_key, self.ok_first = status_always, raw_body, echo_key, ok_first
        self.lock = threading.Lock()
        self.requests = 0
        self.auth: set[str] = set()
        self.bodies: list[dict] = []


def reply_for(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    first = user.splitlines()[0].split(":", 1)[-1].strip()
    return f"A shop entry about {first}. It suits people who want exactly that, at a fair price."


class Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def _send(self, code: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client timed out and went away
            pass

    def _send_raw(self, code: int, text: str) -> None:
        data = text.encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:
        b = self.behaviour
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        with b.lock:
            b.requests += 1
            n = b.requests
            b.auth.add(self.headers.get("Authorization", ""))
            b.bodies.append(body)
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": f"no route {self.path}"}})
        if n > b.ok_first:
            if b.echo_key:
                auth = self.headers.get("Authorization", "")
                return self._send(401, {"error": {"message": f"invalid api key: {auth.removeprefix('Bearer ')}"}})
            if b.raw_body is not None:
                return self._send_raw(200, b.raw_body)
            if b.status_always:
                return self._send(b.status_always, {"error": {"message": "unavailable"}})
        if n <= b.n_429:
            return self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": "0"})
        if n <= b.n_429 + b.n_503:
            return self._send(503, {"error": {"message": "overloaded"}})
        if n <= b.n_429 + b.n_503 + b.slow_first:
            time.sleep(b.slow_s)
        text = reply_for(body["messages"])
        prompt = body["messages"][-1]["content"]
        if b.always_degenerate_marker and b.always_degenerate_marker in prompt:
            text = "nice " * 30
        elif b.degenerate_marker and b.degenerate_marker in prompt and body.get("temperature", 0) == 0:
            text = ""
        self._send(200, {"id": f"cmpl-{n}", "object": "chat.completion", "model": body.get("model"),
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
                                   "total_tokens": len(prompt.split()) + len(text.split())}})


class LocalLLMServer:
    """``with LocalLLMServer(Behaviour(...)) as s: s.base_url`` -> ``http://127.0.0.1:<port>/v1``.

    Subclasses serve another API by setting ``handler``, ``behaviour_type`` and ``prefix``."""

    handler: type = Handler
    behaviour_type: type = Behaviour
    prefix = "/v1"

    def __init__(self, behaviour=None) -> None:
        self.behaviour = behaviour or self.behaviour_type()
        bound = type("BoundHandler", (self.handler,), {"behaviour": self.behaviour})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), bound)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}{self.prefix}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
