"""Secrets out of everything persona-spark writes: one ``redact`` for every text that leaves the process.

Providers echo keys in their errors (``Incorrect API key provided: Bearer sk-...``), whole or masked. Such text
reaches the label rows (``error`` and ``answer`` of ``user_labels`` / ``item_labels`` and the label journal, all
made by ``labeling.base.make_row``), the Batch API's downloaded files and its ledger, log records, the CLI's
output and the report; each of those passes its text through :func:`redact` where it is written. It removes

* the values of the secrets this process holds: a :class:`Secret` registers its value when it is made or
  unpickled on an executor, and a run registers the configured key's environment variable, so a task on
  another machine knows the key it was given; and any word sharing ``MIN_SECRET_CHARS`` consecutive
  characters with one (a masked echo such as ``sk-proj-****abcd1234``);
* anything shaped like a key, known or not: ``sk-...``, ``Bearer ...``, ``dapi...``, ``api_key=...``.

:func:`install` (done by every run and by the first secret a process registers) passes every log record made in
the process, and the traceback of an exception nobody catches, through ``redact`` as well.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import traceback
from collections.abc import Iterable

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter runs of a secret are too common in plain text to be telling
# No shape takes a backslash or a quote, so text inside JSON stays valid JSON once redacted.
_SECRET_SHAPES = (
    re.compile(r"\bsk-[A-Za-z0-9_*\-]{4,}"),  # OpenAI keys and their masked echoes (sk-proj-****abcd)
    re.compile(r"\bbearer\s+[^\s\"'\\,;]+", re.IGNORECASE),  # Authorization: Bearer <token>
    re.compile(r"\bdapi[0-9a-f]{16,}(-\d+)?\b"),  # Databricks personal access tokens
)
# api_key=..., "access_token": "...", password: ... keep the name, drop the value
_NAMED_SECRET = re.compile(
    r"\b(api[_-]?key|access[_-]?token|client[_-]?secret|password|authorization)([\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"'\\,;&}]+)",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"[A-Za-z0-9_\-~+/=]+")  # a word of a key (dots end it: masks print "...")

_known: set[str] = set()  # the secret values this process holds


def register(value: str | None) -> None:
    """Redact ``value`` from everything this process writes from then on (and install the log redaction)."""
    if value and len(value) >= MIN_SECRET_CHARS:
        _known.add(value)
    install()


class Secret:
    """An API key that never shows up in reprs, logs or error messages. Made or unpickled (a task on an
    executor), it registers its value, so that process redacts it too."""

    def __init__(self, value: str):
        self._value = value
        register(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __reduce__(self):
        return Secret, (self._value,)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without the registered secrets and ``secrets``, without any word sharing a run of
    MIN_SECRET_CHARS characters with one (a masked echo), and without anything shaped like a key
    (``sk-...``, bearer tokens, ``dapi...``, ``api_key=...``)."""
    known = sorted({s for s in (*_known, *secrets) if s and len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, REDACTED)
    windows = {s[i:i + MIN_SECRET_CHARS] for s in known for i in range(len(s) - MIN_SECRET_CHARS + 1)}

    def fragment(match: re.Match) -> str:
        """The word whole, or redacted when it shares MIN_SECRET_CHARS consecutive characters with a secret."""
        token = match.group(0)
        parts = (token[i:i + MIN_SECRET_CHARS] for i in range(len(token) - MIN_SECRET_CHARS + 1))
        return REDACTED if any(p in windows for p in parts) else token

    if any(w in text for w in windows):  # the word-by-word pass only where a piece of a secret is left
        text = _TOKEN.sub(fragment, text)
    for shape in _SECRET_SHAPES:
        text = shape.sub(REDACTED, text)
    return _NAMED_SECRET.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


def redact_json_line(line: str) -> str:
    """One line of a JSONL file, redacted value by value so that it stays the JSON it was (a line that is
    not JSON is redacted as text); an untouched line comes back as it was, byte for byte."""
    clean = redact(line)
    if clean == line:
        return line
    try:
        data = json.loads(line)
    except ValueError:
        return clean
    return json.dumps(_redact_values(data), ensure_ascii=False)


def _redact_values(value):
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(k): _redact_values(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_values(v) for v in value]
    return value


def redact_exception(error: BaseException) -> BaseException:
    """``error`` and the exceptions it was raised from, their text arguments redacted in place: a notebook or a
    caller that prints the exception shows what ``str`` gives, which those arguments make. Returns ``error``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
        except (AttributeError, TypeError):  # an extension type whose args cannot be set: left as it is
            pass
        current = current.__cause__ or current.__context__
    return error


# ---- the process's log records and uncaught exceptions ----------------------------------------------
_install_lock = threading.Lock()
_installed = False


def install() -> None:
    """Pass every log record made in this process (message and traceback) and every uncaught exception's
    traceback (main thread and others) through ``redact``. Idempotent."""
    global _installed
    with _install_lock:
        if _installed:
            return
        make_record = logging.getLogRecordFactory()

        def redacted_record(*args, **kwargs) -> logging.LogRecord:
            return redact_record(make_record(*args, **kwargs))

        logging.setLogRecordFactory(redacted_record)
        sys.excepthook = _print_redacted
        threading.excepthook = _print_redacted_thread
        _installed = True


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """The record with its message (formatted at once) and its traceback text redacted."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string: logging reports it when the record is emitted
        return record
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, ()
    if record.exc_info and record.exc_info[0] is not None:
        # Formatters print exc_text when it is set, instead of formatting the exception themselves.
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    return record


def _print_redacted(exc_type, exc, tb) -> None:
    sys.stderr.write(redact("".join(traceback.format_exception(exc_type, exc, tb))))


def _print_redacted_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "unknown"
    sys.stderr.write(redact(f"Exception in thread {name}:\n"
                            + "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))))
