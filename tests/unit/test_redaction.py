"""The one redaction function, and what passes through it without a run: text, JSONL lines, log records,
uncaught tracebacks, and a ``Secret`` unpickled in another process (as on an executor)."""

from __future__ import annotations

import io
import json
import logging
import pickle
import subprocess
import sys
import traceback
import uuid

from persona_spark.redaction import REDACTED, Secret, install, redact, redact_exception, redact_json_line, register


def unique_key(prefix: str = "azure-") -> str:
    """A key value no other test registered (the registry lives as long as the process)."""
    return prefix + uuid.uuid4().hex


def test_redact_removes_keys_and_their_masked_echoes():
    echoed = ("Error code: 401 - {'error': {'message': 'Incorrect API key provided: sk-proj-Ab12************************wXyZ. "
              "You can find your API key at https://platform.openai.com/account/api-keys.'}}")
    assert "sk-proj" not in redact(echoed) and "wXyZ" not in redact(echoed)
    assert "Incorrect API key provided: [redacted]. You can find your API key at" in redact(echoed)
    header = "request failed; headers={'Authorization': 'Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig'}"
    assert "eyJ" not in redact(header) and "Authorization" in redact(header)
    assert redact("retry with api_key=abc123secret&x=1") == "retry with api_key=[redacted]&x=1"
    assert redact("token dapi0123456789abcdef0123 rejected") == "token [redacted] rejected"
    key = unique_key()
    by_value = f"401 for key {key} (prefix {key[:12]}..., suffix ...{key[-9:]})"
    redacted = redact(by_value, [key])
    assert key[:8] not in redacted and key[-8:] not in redacted and redacted.count(REDACTED) == 3
    assert key[:12] in redact(by_value)  # without the configured value only key shapes are known


def test_redact_keeps_ordinary_errors_and_short_or_missing_secrets():
    plain = "KeyError: 'share_unchanged' (12 tokens used, retry in 2.5 s; see secret_scope)"
    assert redact(plain, [unique_key(), None, "", "short"]) == plain
    assert redact(redact(plain + " sk-abcdef123")) == plain + " [redacted]"


def test_a_registered_secret_is_redacted_everywhere_in_this_process():
    key = unique_key()
    text = f"proxy said: token {key} refused (tail ...{key[-10:]})"
    assert key in redact(text)
    register(key)
    assert redact(text) == f"proxy said: token {REDACTED} refused (tail ...{REDACTED})"


def test_a_jsonl_line_stays_valid_json_and_an_untouched_one_stays_byte_for_byte():
    key = unique_key("sk-")
    register(key)
    # a quote right after the key, an escape right before it: redacting the JSON text would break both
    line = json.dumps({"custom_id": "7-abc", "error": {"message": f'key "Bearer {key}" rejected\n{key}'},
                       "response": None}, ensure_ascii=False)
    clean = redact_json_line(line)
    data = json.loads(clean)
    assert key not in clean and data["custom_id"] == "7-abc"
    assert data["error"]["message"] == f'key "{REDACTED}" rejected\n{REDACTED}'
    untouched = '{"custom_id": "8-def",  "response": {"status_code": 200}}'  # odd spacing kept
    assert redact_json_line(untouched) == untouched
    assert redact_json_line(f"not json {key}") == f"not json {REDACTED}"


def test_log_records_lose_the_key_in_message_arguments_and_traceback():
    key = unique_key("sk-live-")
    register(key)  # installs the record redaction
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("provider answered %s for key %s", 401, key)
        try:
            raise RuntimeError(f"Incorrect API key provided: {key}")
        except RuntimeError:
            logger.exception("call failed with Authorization: Bearer %s", key)
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert key not in written and key[-12:] not in written
    assert "provider answered 401 for key [redacted]" in written
    assert "RuntimeError: Incorrect API key provided: [redacted]" in written  # the traceback is there, redacted


def test_a_secret_unpickled_in_another_process_is_redacted_there_and_so_are_uncaught_tracebacks():
    key = unique_key()
    script = (
        "import pickle, sys\n"
        "secret = pickle.loads(sys.stdin.buffer.read())\n"  # as a task on an executor receives it
        "from persona_spark.redaction import redact\n"
        f"print(redact('echo: {key}'))\n"
        f"raise RuntimeError('the provider quoted {key}')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(Secret(key)), capture_output=True,
                            timeout=60)
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1 and out.strip() == f"echo: {REDACTED}"
    assert "RuntimeError: the provider quoted [redacted]" in err and key not in err
    assert "Secret('***')" == repr(Secret(key))


def test_install_is_idempotent():
    install()
    factory = logging.getLogRecordFactory()
    install()
    assert logging.getLogRecordFactory() is factory


def test_an_exception_and_its_causes_are_redacted_in_place():
    key = unique_key("sk-")
    register(key)
    try:
        try:
            raise KeyError(f"no model for {key}")
        except KeyError as cause:
            raise RuntimeError(f"Incorrect API key provided: {key}", 401) from cause
    except RuntimeError as error:
        assert redact_exception(error) is error
        assert error.args == ("Incorrect API key provided: [redacted]", 401)
        assert key not in "".join(traceback.format_exception(error))
