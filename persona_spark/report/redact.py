"""Secrets out of text that reaches the report: API errors echo masked keys, headers and tokens."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter runs of a configured secret are too common in plain text to be telling
_SECRET_SHAPES = (
    re.compile(r"\bsk-[A-Za-z0-9_*\-]{4,}"),  # OpenAI keys and their masked echoes (sk-proj-****abcd)
    re.compile(r"\bbearer\s+[^\s\"',;]+", re.IGNORECASE),  # Authorization: Bearer <token>
    re.compile(r"\bdapi[0-9a-f]{16,}(-\d+)?\b"),  # Databricks personal access tokens
)
# api_key=..., "access_token": "...", password: ... keep the name, drop the value
_NAMED_SECRET = re.compile(
    r"\b(api[_-]?key|access[_-]?token|client[_-]?secret|password|authorization)([\"']?\s*[:=]\s*[\"']?)([^\s\"',;&}]+)",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"[A-Za-z0-9_\-~+/=]+")  # a word of a key (dots end it: masks print "...")


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without the ``secrets`` (the configured key's value) or any word sharing a run of
    MIN_SECRET_CHARS characters with one (a masked echo), and without anything shaped like a key
    (``sk-...``, bearer tokens, ``dapi...``, ``api_key=...``)."""
    known = [s for s in secrets if s and len(s) >= MIN_SECRET_CHARS]
    for secret in known:
        text = text.replace(secret, REDACTED)

    def fragment(match: re.Match) -> str:
        """The word whole, or redacted when it shares MIN_SECRET_CHARS consecutive characters with a secret."""
        token = match.group(0)
        windows = (token[i:i + MIN_SECRET_CHARS] for i in range(len(token) - MIN_SECRET_CHARS + 1))
        return REDACTED if any(w in s for w in windows for s in known) else token

    if known:
        text = _TOKEN.sub(fragment, text)
    for shape in _SECRET_SHAPES:
        text = shape.sub(REDACTED, text)
    return _NAMED_SECRET.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
