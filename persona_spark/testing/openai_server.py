"""A real OpenAI-compatible server on 127.0.0.1 (chat completions, files, batches), scriptable.

Used by the tests and the benchmarks so the client, retries, timeouts, rate limits, the Batch API
and parsing are exercised over real HTTP instead of mocks. A *responder* decides each chat reply
from the request body: normal answers, 429 with ``Retry-After``, 5xx, slow replies, malformed JSON
or invented names. The server counts every request and records which entity ids it answered with
HTTP 200, which is how the tests prove that no answer was paid for twice.

It also enforces a tokens/requests-per-minute budget the way providers do (token buckets, a request
charged its prompt estimate + ``max_tokens``, 429 + ``x-ratelimit-*`` headers), reports cached
prompt tokens for a repeated prompt prefix, and runs the Batch API (``/v1/files``, ``/v1/batches``)
with scripted faults (``BatchFaults``): missing, duplicated, malformed and failed lines, an expired
batch with partial output, a batch that fails validation, batches held in progress.

With ``echo_authorization`` it behaves like a careless provider: every error body (a chat reply of
status 400 or more, a failed line of a batch's error file) quotes the request's ``Authorization``
header, which is how the tests prove that the key never reaches a table, a file or a log.
"""

from __future__ import annotations

import email.parser
import json
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

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


def echoed_authorization(status: int, authorization: str | None) -> bytes:
    """An error body quoting the request's Authorization header, as careless providers and proxies write them."""
    if status == 401:
        error = {"message": f"Incorrect API key provided: {authorization}", "type": "invalid_request_error",
                 "code": "invalid_api_key"}
    else:
        error = {"message": f"The server had an error processing the request (Authorization: {authorization})",
                 "type": "server_error"}
    return json.dumps({"error": error}).encode()


LINE_FAULTS = ("missing", "duplicated", "malformed", "failed")
CACHE_MIN_TOKENS = 1024  # providers cache a repeated prompt prefix of at least this many tokens ...
CACHE_BLOCK_TOKENS = 128  # ... in blocks of this many


def charged_tokens(body: dict) -> int:
    """What the server's TPM limiter charges a request up front (as OpenAI does): its characters / 4
    (plus 4 per message) and the whole ``max_tokens``."""
    prompt = sum(math.ceil(len(m.get("content") or "") / 4) + 4 for m in body.get("messages", []))
    return prompt + int(body.get("max_tokens") or 0)


@dataclass
class BatchFaults:
    """Faults scripted into every batch created while set. ``line_fault(custom_id)`` names what
    happens to one line: None (answered), or one of ``LINE_FAULTS``."""

    line_fault: Callable[[str], str | None] = lambda _cid: None
    expire_after: int | None = None  # the batch expires after running only its first n lines
    fail_validation: int = 0  # the next n batches fail validation
    hold: bool = False  # batches stay in_progress until ``release_batches``


def random_line_faults(share: float, seed: int = 0) -> Callable[[str], str | None]:
    """A seeded fault for ``share`` of the lines, cycling through the four kinds."""

    def fault(custom_id: str) -> str | None:
        rng = random.Random(f"{seed}:{custom_id}")
        return LINE_FAULTS[rng.randrange(len(LINE_FAULTS))] if rng.random() < share else None

    return fault


class LoopbackChatServer:
    """``with LoopbackChatServer(responder, latency_s=0.2) as server: client(base_url=server.base_url)``."""

    def __init__(self, responder: Responder, latency_s: float = 0.0, model: str = "loopback-model",
                 tokens_per_minute: int = 0, requests_per_minute: int = 0, echo_authorization: bool = False):
        self.responder = responder
        self.echo_authorization = echo_authorization
        self.latency_s = latency_s
        self.model = model
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.request_times: list[float] = []
        self.authorizations: set[str] = set()
        self.statuses: Counter = Counter()
        self.answered_ids: list[str] = []
        # rate limits: (arrival time, charged tokens) of accepted requests, arrival times of 429s
        self.limits = {"tokens": float(tokens_per_minute), "requests": float(requests_per_minute)}
        self.levels = dict(self.limits)
        self._levels_at = time.monotonic()
        self.accepted: list[tuple[float, int]] = []
        self.rejected: list[float] = []
        self._prefixes: set[str] = set()
        # batch API state
        self.batch_faults = BatchFaults()
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.submitted_ids: Counter = Counter()  # custom_ids of every created batch
        self.executed_ids: Counter = Counter()  # custom_ids run with HTTP 200: what the bill counts
        self._held: list[str] = []
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

    # ---- rate limits -----------------------------------------------------------------------
    def _admit(self, body: dict) -> tuple[bool, dict[str, str]]:
        """Token buckets (full at start, refilled at limit/60 per second): admit and charge the
        request, or refuse it uncharged; either way the ``x-ratelimit-*`` headers."""
        charge = {"tokens": charged_tokens(body), "requests": 1}
        with self.lock:
            now = time.monotonic()
            for kind, limit in self.limits.items():
                if limit:
                    self.levels[kind] = min(limit, self.levels[kind] + (now - self._levels_at) * limit / 60)
            self._levels_at = now
            ok = all(not limit or self.levels[k] >= charge[k] for k, limit in self.limits.items())
            if ok:
                for kind, limit in self.limits.items():
                    if limit:
                        self.levels[kind] -= charge[kind]
                self.accepted.append((now, charge["tokens"]))
            else:
                self.rejected.append(now)
            headers = {}
            for kind, limit in self.limits.items():
                if limit:
                    level = max(self.levels[kind], 0.0)
                    headers[f"x-ratelimit-limit-{kind}"] = f"{int(limit)}"
                    headers[f"x-ratelimit-remaining-{kind}"] = f"{int(level)}"
                    headers[f"x-ratelimit-reset-{kind}"] = f"{(limit - level) * 60 / limit:.3f}s"
            return ok, headers

    # ---- chat completions ------------------------------------------------------------------
    def _chat(self, body: dict, authorization: str | None) -> tuple[Reply, bytes]:
        with self.lock:
            call_index = len(self.requests)
            self.requests.append(body)
            self.request_times.append(time.monotonic())
            if authorization is not None:  # batch lines run under the batch's own authorization
                self.authorizations.add(authorization)
        try:
            reply = self.responder(body, call_index)
        except Exception as exc:  # noqa: BLE001 — a broken script shows up as a 500, not a hang
            reply = server_error(500)
            reply.raw = json.dumps({"error": {"message": f"responder failed: {exc!r}"}}).encode()
        if self.echo_authorization and reply.status >= 400:
            return reply, echoed_authorization(reply.status, authorization)
        payload = reply.raw if reply.raw is not None else self._completion(body, reply.content or "")
        return reply, payload

    # ---- files and batches -----------------------------------------------------------------
    def _upload(self, content_type: str, data: bytes) -> tuple[int, dict]:
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + data)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
        if "file" not in fields:
            return 400, {"error": {"message": "no file in the upload"}}
        content = fields["file"].get_payload(decode=True)
        purpose = fields["purpose"].get_payload(decode=True).decode() if "purpose" in fields else "batch"
        name = fields["file"].get_param("filename", header="content-disposition") or "upload.jsonl"
        return 200, self._store_file(content, name, purpose)

    def _store_file(self, content: bytes, name: str, purpose: str) -> dict:
        with self.lock:
            file_id = f"file-{len(self.files) + 1:06d}"
            record = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                      "filename": name, "purpose": purpose, "status": "processed"}
            self.files[file_id] = {**record, "content": content}
        return record

    def _create_batch(self, body: dict, authorization: str | None = None) -> tuple[int, dict]:
        source = self.files.get(body.get("input_file_id", ""))
        if source is None:
            return 404, {"error": {"message": f"no file {body.get('input_file_id')!r}"}}
        with self.lock:
            batch_id = f"batch_{len(self.batches) + 1:06d}"
            batch = {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "errors": None,
                "input_file_id": source["id"], "completion_window": body.get("completion_window", "24h"),
                "status": "validating", "output_file_id": None, "error_file_id": None,
                "created_at": int(time.time()), "request_counts": {"total": 0, "completed": 0, "failed": 0},
                "metadata": body.get("metadata"),
            }
            faults = self.batch_faults
            batch["_faults"] = BatchFaults(faults.line_fault, faults.expire_after, faults.fail_validation > 0, faults.hold)
            batch["_authorization"] = authorization  # what the batch's lines run under
            if faults.fail_validation:
                faults.fail_validation -= 1
            self.batches[batch_id] = batch
        for line in source["content"].decode(errors="replace").splitlines():
            try:
                self.submitted_ids[json.loads(line)["custom_id"]] += 1
            except (ValueError, KeyError, TypeError):
                pass
        return 200, self._public(batch)

    @staticmethod
    def _public(batch: dict) -> dict:
        public = {k: v for k, v in batch.items() if not k.startswith("_")}
        if public["status"] == "_running":
            public["status"] = "finalizing"
        return public

    def _validate(self, batch: dict, lines: list[str]) -> list[dict]:
        errors, seen = [], set()
        for number, line in enumerate(lines, 1):
            try:
                request = json.loads(line)
                custom_id = request["custom_id"]
                if custom_id in seen:
                    raise ValueError(f"duplicate custom_id {custom_id!r}")
                seen.add(custom_id)
                if request.get("method") != "POST" or request.get("url") != batch["endpoint"]:
                    raise ValueError(f"method/url must be POST {batch['endpoint']}")
                if not isinstance(request.get("body", {}).get("messages"), list):
                    raise ValueError("body has no messages")
            except (ValueError, KeyError, TypeError) as exc:
                errors.append({"code": "invalid_request", "message": str(exc)[:200], "line": number, "param": None})
        if batch["_faults"].fail_validation and not errors:
            errors.append({"code": "invalid_request", "message": "scripted: the input file failed validation", "line": 1, "param": None})
        return errors

    def _run_batch(self, batch: dict) -> None:
        """Validate, then run every line through the responder into the output and error files."""
        lines = [ln for ln in self.files[batch["input_file_id"]]["content"].decode(errors="replace").splitlines() if ln.strip()]
        errors = self._validate(batch, lines)
        if errors:
            batch.update(status="failed", errors={"object": "list", "data": errors[:100]}, failed_at=int(time.time()))
            return
        faults: BatchFaults = batch["_faults"]
        output, failed = [], []
        for number, line in enumerate(lines):
            request = json.loads(line)
            custom_id = request["custom_id"]
            if faults.expire_after is not None and number >= faults.expire_after:
                failed.append({"id": f"batch_req_{number}", "custom_id": custom_id, "response": None,
                               "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
                continue
            fault = faults.line_fault(custom_id)
            reply, payload = self._chat(request["body"], None)
            if fault == "failed":
                reply, payload = server_error(500), server_error(500).raw
            if self.echo_authorization and reply.status >= 400:
                payload = echoed_authorization(reply.status, batch["_authorization"])
            try:
                answer_body = json.loads(payload)
            except ValueError:
                answer_body = payload.decode(errors="replace")
            result = {"id": f"batch_req_{number}", "custom_id": custom_id,
                      "response": {"status_code": reply.status, "request_id": f"req_{number}", "body": answer_body}, "error": None}
            if reply.status != 200:
                failed.append(result)
                continue
            with self.lock:
                self.executed_ids[custom_id] += 1
                self.answered_ids.extend(entity_ids(request["body"]))
            text = json.dumps(result)
            if fault == "missing":
                continue
            if fault == "malformed":
                text = text[: len(text) // 2]
            output.append(text)
            if fault == "duplicated":
                output.append(text)
        counts = {"total": len(lines), "completed": len(lines) - len(failed), "failed": len(failed)}
        if output:
            batch["output_file_id"] = self._store_file(("\n".join(output) + "\n").encode(), f"{batch['id']}_output.jsonl", "batch_output")["id"]
        if failed:
            batch["error_file_id"] = self._store_file(("\n".join(json.dumps(f) for f in failed) + "\n").encode(), f"{batch['id']}_error.jsonl", "batch_output")["id"]
        batch.update(request_counts=counts, status="expired" if faults.expire_after is not None and faults.expire_after < len(lines) else "completed")

    def _retrieve(self, batch_id: str) -> tuple[int, dict]:
        batch = self.batches.get(batch_id)
        if batch is None:
            return 404, {"error": {"message": f"no batch {batch_id!r}"}}
        with self.lock:
            advance = batch["status"] == "validating" or (batch["status"] == "in_progress" and not batch["_faults"].hold)
            status = batch["status"]
            if advance:
                batch["status"] = "_running" if status == "in_progress" else "in_progress"
        if advance and status == "in_progress":
            self._run_batch(batch)
        return 200, self._public(batch)

    def release_batches(self) -> None:
        """Let held batches finish (the next retrieve runs them)."""
        with self.lock:
            for batch in self.batches.values():
                batch["_faults"].hold = False
            self.batch_faults.hold = False

    def start(self) -> LoopbackChatServer:
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> LoopbackChatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _completion(self, body: dict, content: str) -> bytes:
        messages = body.get("messages", [])
        prompt_chars = sum(len(m.get("content") or "") for m in messages)
        prompt_tokens, completion_tokens = prompt_chars // 4 + 1, len(content) // 4 + 1
        # Prompt caching: a prefix (every message but the last) seen before is served from cache.
        prefix = json.dumps(messages[:-1], sort_keys=True)
        prefix_tokens = sum(len(m.get("content") or "") for m in messages[:-1]) // 4
        with self.lock:
            seen = prefix in self._prefixes
            self._prefixes.add(prefix)
        cached = (prefix_tokens // CACHE_BLOCK_TOKENS) * CACHE_BLOCK_TOKENS if seen and prefix_tokens >= CACHE_MIN_TOKENS else 0
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
                    "prompt_tokens_details": {"cached_tokens": cached},
                },
            }
        ).encode()


class _Handler(BaseHTTPRequestHandler):
    """Routes each HTTP request of a ``_HTTPServer`` to the ``LoopbackChatServer`` that owns it."""

    server: _HTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        server = self.server.owner
        path = urlparse(self.path).path.rstrip("/")
        parts = path.split("/")
        if path.endswith("/batches"):
            data = [server._public(b) for b in reversed(list(server.batches.values()))]
            self._json(200, {"object": "list", "data": data, "has_more": False})
        elif len(parts) >= 2 and parts[-2] == "batches":
            self._json(*server._retrieve(parts[-1]))
        elif len(parts) >= 3 and parts[-3] == "files" and parts[-1] == "content":
            record = server.files.get(parts[-2])
            if record is None:
                self._json(404, {"error": {"message": "no such file"}})
            else:
                self._send(200, record["content"], {"Content-Type": "application/octet-stream"})
        elif len(parts) >= 2 and parts[-2] == "files" and parts[-1] in server.files:
            self._json(200, {k: v for k, v in server.files[parts[-1]].items() if k != "content"})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        server = self.server.owner
        length = int(self.headers.get("Content-Length", 0))
        data = self.rfile.read(length)
        path = urlparse(self.path).path.rstrip("/")
        if path.endswith("/files"):
            self._json(*server._upload(self.headers.get("Content-Type", ""), data))
            return
        body = json.loads(data or b"{}")
        if path.endswith("/batches"):
            self._json(*server._create_batch(body, self.headers.get("Authorization")))
            return
        if not path.endswith("/chat/completions"):
            self._json(404, {"error": {"message": "not found"}})
            return
        admitted, limit_headers = server._admit(body)
        if not admitted:
            reply = rate_limited(1.0)
            reply.headers.pop("Retry-After")
            with server.lock:
                server.statuses[429] += 1
            self._send(429, reply.raw, limit_headers)
            return
        reply, payload = server._chat(body, self.headers.get("Authorization", ""))
        time.sleep(server.latency_s + reply.delay_s)
        with server.lock:
            server.statuses[reply.status] += 1
        if self._send(reply.status, payload, {**limit_headers, **reply.headers}) and reply.status == 200:
            with server.lock:
                server.answered_ids.extend(entity_ids(body))

    def _json(self, status: int, payload: dict) -> None:
        self._send(status, json.dumps(payload).encode(), {})

    def _send(self, status: int, payload: bytes, headers: dict[str, str]) -> bool:
        try:
            self.send_response(status)
            if "Content-Type" not in headers:
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


class _HTTPServer(ThreadingHTTPServer):
    """The listening socket on 127.0.0.1 (a free port), one daemon thread per connection."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, owner: LoopbackChatServer):
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)
