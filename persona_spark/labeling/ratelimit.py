"""One tokens-per-minute / requests-per-minute budget for every labeling task of a job.

Providers meter an organisation (or key) per minute, not a Spark partition, so a per-task limit
either wastes the quota or multiplies it by the number of tasks. The budget therefore lives in one
place: a ``SharedBudget`` (two token buckets refilled at limit/60 per second, full at start, as the
providers' own limiters are) on the driver, served over HTTP by ``BudgetServer`` on the driver's
address. Every task asks it before each request (``RemoteBudget.reserve``) and reports the
``x-ratelimit-remaining-*`` headers of each response, which can only lower the budget (another job
on the same key, a provider that counts differently). A request is charged like the providers
charge it up front: prompt estimate (chars/4) + ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | None) -> float | None:
    """``x-ratelimit-reset-*`` values: "6m0s", "1.5s", "20ms" or plain seconds."""
    if not text:
        return None
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        parts = DURATION_PART.findall(text)
        return sum(float(v) * SECONDS_PER_UNIT[u] for v, u in parts) if parts else None


def header_limits(headers) -> dict:
    """The rate-limit headers of a response, as numbers (absent ones left out)."""
    out = {}
    for kind in ("tokens", "requests"):
        for field, parse in (("limit", float), ("remaining", float), ("reset", parse_duration)):
            value = headers.get(f"x-ratelimit-{field}-{kind}") if headers is not None else None
            if value is None:
                continue
            try:
                parsed = parse(value)
            except ValueError:
                continue
            if parsed is not None:
                out[f"{field}_{kind}"] = parsed
    return out


class TokenBucket:
    """Capacity ``per_minute``, refilled continuously; a reservation may drive it below zero, which
    makes the next callers wait in arrival order. ``per_minute`` 0 = unlimited."""

    def __init__(self, per_minute: float, clock=time.monotonic):
        self.clock = clock
        self.per_minute = float(per_minute)
        self.level = float(per_minute)
        self.updated = clock()

    def _refill(self, now: float) -> None:
        if self.per_minute:
            self.level = min(self.per_minute, self.level + (now - self.updated) * self.per_minute / 60)
        self.updated = now

    def reserve(self, amount: float, now: float) -> float:
        """Take ``amount``; returns the seconds until it is covered (0 when it already is)."""
        if not self.per_minute:
            return 0.0
        self._refill(now)
        self.level -= amount
        return max(0.0, -self.level * 60 / self.per_minute)

    def observe(self, limit: float | None, remaining: float | None, now: float) -> None:
        if limit and not self.per_minute:  # no budget configured: adopt the provider's
            self.per_minute = self.level = float(limit)
        self._refill(now)
        if remaining is not None and self.per_minute:
            self.level = min(self.level, remaining)


class SharedBudget:
    """The job's TPM and RPM buckets (thread-safe)."""

    def __init__(self, tokens_per_minute: float, requests_per_minute: float, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.tokens = TokenBucket(tokens_per_minute, clock)
        self.requests = TokenBucket(requests_per_minute, clock)

    def reserve(self, tokens: float) -> float:
        with self.lock:
            now = self.clock()
            return max(self.tokens.reserve(tokens, now), self.requests.reserve(1, now))

    def observe(self, limits: dict) -> None:
        with self.lock:
            now = self.clock()
            self.tokens.observe(limits.get("limit_tokens"), limits.get("remaining_tokens"), now)
            self.requests.observe(limits.get("limit_requests"), limits.get("remaining_requests"), now)


class BudgetServer:
    """Serves a ``SharedBudget`` on ``host`` (the driver's address) to the job's tasks. The URL holds
    a random path token, so only holders of the (pickled) URL can draw from the budget."""

    def __init__(self, budget: SharedBudget, host: str = "127.0.0.1"):
        self.budget = budget
        self.token = secrets.token_hex(8)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == f"/{server.token}/reserve":
                    reply = {"wait_s": server.budget.reserve(float(body.get("tokens", 0)))}
                elif self.path == f"/{server.token}/observe":
                    server.budget.observe(body)
                    reply = {}
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 512

        self._httpd = Server((host, 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True, name="labeling-budget").start()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/{self.token}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


_SERVERS: dict[tuple, BudgetServer] = {}
_SERVERS_LOCK = threading.Lock()


def job_budget_url(tokens_per_minute: int, requests_per_minute: int, endpoint: str, host: str) -> str:
    """The driver's budget server for this endpoint and limits, started once per driver process so
    chunks and GPLR rounds of one job draw from the same minute."""
    key = (tokens_per_minute, requests_per_minute, endpoint, host)
    with _SERVERS_LOCK:
        if key not in _SERVERS:
            _SERVERS[key] = BudgetServer(SharedBudget(tokens_per_minute, requests_per_minute), host)
        return _SERVERS[key].url


class RemoteBudget:
    """A task's handle on the driver's budget (async, one per event loop)."""

    def __init__(self, url: str):
        import httpx2

        self.url = url
        self._client = httpx2.AsyncClient(timeout=30.0)

    async def reserve(self, tokens: int) -> None:
        response = await self._client.post(f"{self.url}/reserve", json={"tokens": tokens})
        response.raise_for_status()
        wait = response.json()["wait_s"]
        if wait > 0:
            await asyncio.sleep(wait)

    async def observe(self, headers) -> None:
        limits = header_limits(headers)
        if limits:
            await self._client.post(f"{self.url}/observe", json=limits)

    async def aclose(self) -> None:
        await self._client.aclose()


class LocalBudget:
    """The same interface over an in-process ``SharedBudget`` (driver-side calls)."""

    def __init__(self, budget: SharedBudget):
        self.budget = budget

    async def reserve(self, tokens: int) -> None:
        wait = self.budget.reserve(tokens)
        if wait > 0:
            await asyncio.sleep(wait)

    async def observe(self, headers) -> None:
        limits = header_limits(headers)
        if limits:
            self.budget.observe(limits)

    async def aclose(self) -> None:
        pass
