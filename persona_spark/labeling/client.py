"""Async chat-completions calls through the ``openai`` client, with our own bounded retries.

The client's built-in retries are switched off (``max_retries=0``) so that every attempt is
counted, the backoff is jittered, ``Retry-After`` / ``retry-after-ms`` are honoured, and the last
failure becomes an error *value* — a labeling task never raises because one call failed.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass

from persona_spark.config import OpenAIConf
from persona_spark.labeling.prompts import estimate_tokens
from persona_spark.redaction import Secret

RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx


def resolve_api_key(conf: OpenAIConf, spark=None) -> Secret:
    """The key from the env var ``conf.api_key_env``, else from the Databricks secret scope."""
    value = os.environ.get(conf.api_key_env)
    if value:
        return Secret(value)
    if conf.secret_scope and conf.secret_key:
        try:
            from pyspark.dbutils import DBUtils  # only on Databricks
        except ImportError as exc:
            raise RuntimeError(
                f"labeling.openai.secret_scope={conf.secret_scope!r} is set but Databricks secrets are not "
                f"available here; set the env var {conf.api_key_env} instead"
            ) from exc
        return Secret(DBUtils(spark).secrets.get(scope=conf.secret_scope, key=conf.secret_key))
    raise RuntimeError(
        f"no API key for the openai backend: set the env var {conf.api_key_env} or "
        "labeling.openai.secret_scope + labeling.openai.secret_key"
    )


@dataclass
class CallResult:
    content: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    attempts: int
    error: str | None
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache


def chat_body(conf: OpenAIConf, messages: list[dict], response_format: dict | None = None) -> dict:
    """The chat-completions request body, the same for a synchronous call and a batch line."""
    body = {"model": conf.model, "messages": messages, "max_tokens": conf.max_tokens, "temperature": conf.temperature}
    if response_format is not None:
        body["response_format"] = response_format
    return body


def charged_tokens(body: dict) -> int:
    """What a provider's TPM limiter charges up front: the prompt estimated from its characters
    plus the whole ``max_tokens`` (the answer's size is unknown until it is written)."""
    prompt = sum(estimate_tokens(m.get("content") or "") + 4 for m in body.get("messages", []))
    return prompt + int(body.get("max_tokens") or 0)


def completion_result(payload: dict, started: float, attempt: int) -> CallResult:
    """A chat-completion body (synchronous response or batch output line) -> ``CallResult``."""
    latency = int((time.monotonic() - started) * 1000)
    usage = payload.get("usage") or {}
    prompt_tokens, completion_tokens = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    try:
        choice = payload["choices"][0]
        content = choice["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return CallResult(None, prompt_tokens, completion_tokens, latency, attempt, f"response has no message: {str(payload)[:200]}", cached)
    if choice.get("finish_reason") == "length":
        return CallResult(content, prompt_tokens, completion_tokens, latency, attempt, "answer cut at max_tokens", cached)
    return CallResult(content, prompt_tokens, completion_tokens, latency, attempt, None, cached)


def retry_after_seconds(headers) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``Retry-After`` (seconds or HTTP date)."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def backoff_seconds(attempt: int, conf: OpenAIConf, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform(0, min(max, base * 2^(attempt-1)))."""
    return rng.uniform(0, min(conf.backoff_max_s, conf.backoff_base_s * 2 ** (attempt - 1)))


class ChatClient:
    """One ``openai.AsyncOpenAI`` per event loop, its connection pool sized to the concurrency."""

    def __init__(self, conf: OpenAIConf, api_key: Secret, connections: int, seed: int | None = None, budget=None):
        import httpx2

        self.budget = budget  # RemoteBudget / LocalBudget: the job's shared TPM/RPM budget, or None
        import openai

        self.conf = conf
        self._openai = openai
        self._rng = random.Random(seed)
        limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections)
        self._client = openai.AsyncOpenAI(
            api_key=api_key.reveal(),
            base_url=conf.base_url,
            max_retries=0,
            timeout=conf.timeout_s,
            http_client=openai.DefaultAsyncHttpxClient(limits=limits, timeout=conf.timeout_s),
        )

    async def complete(self, messages: list[dict], response_format: dict | None = None) -> CallResult:
        """POST /chat/completions with retries; never raises for HTTP, timeout or protocol errors."""
        import httpx2

        openai = self._openai
        body = chat_body(self.conf, messages, response_format)
        charge = charged_tokens(body)
        started = time.monotonic()
        error = "not attempted"
        attempt = 0
        for attempt in range(1, self.conf.max_attempts + 1):
            wait: float | None = None
            try:
                if self.budget is not None:
                    await self.budget.reserve(charge)
                # The raw POST keeps the official client's auth, base URL, error mapping and
                # timeouts, without its per-call model (de)serialization, CPU every call pays.
                response = await self._client.post(
                    "/chat/completions",
                    body=body,
                    cast_to=httpx2.Response,
                    options={"timeout": self.conf.timeout_s, "security": {"bearer_auth": True}},
                )
                if self.budget is not None:
                    await self.budget.observe(response.headers)
                return completion_result(response.json(), started, attempt)
            except openai.APIStatusError as exc:
                error = f"HTTP {exc.status_code}: {str(exc.message)[:200]}"
                if self.budget is not None:
                    await self.budget.observe(exc.response.headers)
                if exc.status_code not in RETRYABLE_STATUS and exc.status_code < 500:
                    break
                wait = retry_after_seconds(exc.response.headers)
            except openai.APITimeoutError:
                error = f"timed out after {self.conf.timeout_s:g} s"
            except openai.APIConnectionError as exc:
                error = f"connection error: {exc.__cause__ or exc}"[:300]
            except ValueError as exc:  # a 200 whose body is not JSON
                error = f"response body is not JSON: {exc}"[:300]
                break
            if attempt < self.conf.max_attempts:
                delay = wait * (1 + 0.1 * self._rng.random()) if wait is not None else backoff_seconds(attempt, self.conf, self._rng)
                await asyncio.sleep(delay)
        latency = int((time.monotonic() - started) * 1000)
        return CallResult(None, 0, 0, latency, attempt, f"{error} (after {attempt} attempt{'s' * (attempt > 1)})")

    async def aclose(self) -> None:
        await self._client.close()
        if self.budget is not None:
            await self.budget.aclose()
