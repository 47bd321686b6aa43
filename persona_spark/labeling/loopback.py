"""A real OpenAI-compatible chat-completions server on 127.0.0.1, scriptable per request.

Used by the tests and ``benchmarks/labeling.py`` so the client, retries, timeouts and parsing are
exercised over real HTTP instead of mocks. A *responder* decides each reply from the request body:
normal answers, 429 with ``Retry-After``, 5xx, slow replies, malformed JSON or invented names.
The server counts every request and records which entity ids it answered with HTTP 200, which is
how the tests prove that no answer was paid for twice.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

ENTITY_TAG = re.compile(r'<(?:user|item) id="([^"]+)">')
PAPER_HISTORY = re.compile(r"The user (\S+) has totally purchased")  # the paper's serialization (paper_v1)


@dataclass
class Reply:
    """One scripted HTTP reply. ``content`` is the assistant message; ``raw`` replaces the whole body."""

    status: int = 200
    content: str | None = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


Responder = Callable[[dict, int], Reply]


def entity_ids(body: dict) -> list[str]:
    """Ids of the users/items a chat request asks about: the ``<user id="…">`` blocks of the last
    message, or, for the paper's prompts, the users whose history sentences it holds."""
    content = body["messages"][-1]["content"]
    return ENTITY_TAG.findall(content) or PAPER_HISTORY.findall(content)


def answer(ids: list[str], personas_for: Callable[[str], list[str]]) -> str:
    """The JSON an obedient model returns: the single form for one id, the ``answers`` form for several."""
    if len(ids) == 1:
        return json.dumps({"personas": personas_for(ids[0])})
    return json.dumps({"answers": [{"id": i, "personas": personas_for(i)} for i in ids]})


def obedient(personas_for: Callable[[str], list[str]]) -> Responder:
    """A responder answering every asked id with ``personas_for(id)``."""
    return lambda body, _n: Reply(content=answer(entity_ids(body), personas_for))


HISTORY_BLOCK = re.compile(r'<(user|item) id="([^"]+)">(.*?)</\1>', re.S)


def keyword_responder(names: list[str], descriptions: list[str], per_entity: int = 2) -> Responder:
    """An offline stand-in for a model: each entity gets the ``per_entity`` personas whose name and
    description share most words with its history (deterministic, so runs can be compared)."""
    words_of = {n: set(re.findall(r"[a-z]{4,}", f"{n} {d}".lower())) for n, d in zip(names, descriptions)}

    def respond(body: dict, _n: int) -> Reply:
        texts = {entity: text.lower() for _, entity, text in HISTORY_BLOCK.findall(body["messages"][-1]["content"])}

        def personas_for(entity: str) -> list[str]:
            words = set(re.findall(r"[a-z]{4,}", texts.get(entity, "")))
            return sorted(names, key=lambda name: -len(words_of[name] & words))[:per_entity]

        return Reply(content=answer(entity_ids(body), personas_for))

    return respond


def with_rate_limits(inner: Responder, fraction: float, retry_after_s: float = 1.0, seed: int = 0) -> Responder:
    """Wrap ``inner`` so a random ``fraction`` of requests get 429 with a ``Retry-After`` header."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def respond(body: dict, n: int) -> Reply:
        with lock:
            limited = rng.random() < fraction
        if limited:
            return rate_limited(retry_after_s)
        return inner(body, n)

    return respond


def rate_limited(retry_after_s: float) -> Reply:
    body = {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}}
    return Reply(status=429, raw=json.dumps(body).encode(), headers={"Retry-After": f"{retry_after_s:g}"})


def server_error(status: int = 500) -> Reply:
    body = {"error": {"message": "The server had an error", "type": "server_error"}}
    return Reply(status=status, raw=json.dumps(body).encode())


class LoopbackChatServer:
    """``with LoopbackChatServer(responder, latency_s=0.2) as server: client(base_url=server.base_url)``."""

    def __init__(self, responder: Responder, latency_s: float = 0.0, model: str = "loopback-model"):
        self.responder = responder
        self.latency_s = latency_s
        self.model = model
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.request_times: list[float] = []
        self.authorizations: set[str] = set()
        self.statuses: Counter = Counter()
        self.answered_ids: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self) -> int:
        with self.lock:
            return len(self.requests)

    def requests_for(self, entity_id) -> list[float]:
        """Arrival times of the requests that asked about ``entity_id``."""
        with self.lock:
            return [t for body, t in zip(self.requests, self.request_times) if str(entity_id) in entity_ids(body)]

    def start(self) -> "LoopbackChatServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": {"message": "not found"}}', {})
                    return
                with server.lock:
                    call_index = len(server.requests)
                    server.requests.append(body)
                    server.request_times.append(time.monotonic())
                    server.authorizations.add(self.headers.get("Authorization", ""))
                try:
                    reply = server.responder(body, call_index)
                except Exception as exc:  # noqa: BLE001 — a broken script shows up as a 500, not a hang
                    reply = server_error(500)
                    reply.raw = json.dumps({"error": {"message": f"responder failed: {exc!r}"}}).encode()
                time.sleep(server.latency_s + reply.delay_s)
                payload = reply.raw if reply.raw is not None else server._completion(body, reply.content or "")
                with server.lock:
                    server.statuses[reply.status] += 1
                if self._send(reply.status, payload, reply.headers) and reply.status == 200:
                    with server.lock:
                        server.answered_ids.extend(entity_ids(body))

            def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> bool:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                    return True
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    return False

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "LoopbackChatServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _completion(self, body: dict, content: str) -> bytes:
        prompt_chars = sum(len(m.get("content") or "") for m in body.get("messages", []))
        prompt_tokens, completion_tokens = prompt_chars // 4 + 1, len(content) // 4 + 1
        return json.dumps(
            {
                "id": f"chatcmpl-{time.monotonic_ns()}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        ).encode()
