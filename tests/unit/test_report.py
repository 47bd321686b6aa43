"""The report's text without a run: the reach sentence, redacted secrets, the failure box; importing it leaves
matplotlib alone."""

from __future__ import annotations

import os
import subprocess
import sys

from persona_spark import report
from persona_spark.report import render


def test_reach_sentence_under_the_top_k_rule_and_when_everyone_is_reached():
    topk = {"ell": 1, "unlabelled_users": 50, "unreached_users": 5, "unreached_receive": {"no_persona": 5}}
    assert render.reach_sentence(topk).endswith("within 1 round trip (customer → product → customer) of any labelled "
                                                "customer, so no persona propagates to them; the top-k rule gives them none.")
    everyone = {**topk, "unreached_users": 0, "unreached_receive": {"no_persona": 0}}
    assert render.reach_sentence(everyone) == ("All 50 customers not labelled directly are within 1 round trip "
                                               "(customer → product → customer) of a labelled customer.")


API_KEY = "azure-7f3c9e21b04d4a6c8e5f"  # the configured key's value (not key-shaped: found by value)


def test_redact_removes_keys_and_their_masked_echoes():
    echoed = ("Error code: 401 - {'error': {'message': 'Incorrect API key provided: sk-proj-Ab12************************wXyZ. "
              "You can find your API key at https://platform.openai.com/account/api-keys.'}}")
    assert "sk-proj" not in report.redact(echoed) and "wXyZ" not in report.redact(echoed)
    assert "Incorrect API key provided: [redacted]. You can find your API key at" in report.redact(echoed)
    header = "request failed; headers={'Authorization': 'Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig'}"
    assert "eyJ" not in report.redact(header) and "Authorization" in report.redact(header)
    assert report.redact("retry with api_key=abc123secret&x=1") == "retry with api_key=[redacted]&x=1"
    assert report.redact("token dapi0123456789abcdef0123 rejected") == "token [redacted] rejected"
    by_value = f"401 for key {API_KEY} (prefix {API_KEY[:12]}..., suffix ...{API_KEY[-9:]})"
    redacted = report.redact(by_value, [API_KEY])
    assert API_KEY[:8] not in redacted and API_KEY[-8:] not in redacted and redacted.count("[redacted]") == 3
    assert API_KEY[:12] in report.redact(by_value)  # without the configured value only key shapes are known


def test_redact_keeps_ordinary_errors_and_short_or_missing_secrets():
    plain = "KeyError: 'share_unchanged' (12 tokens used, retry in 2.5 s; see secret_scope)"
    assert report.redact(plain, [API_KEY, None, "", "short"]) == plain
    assert report.redact(report.redact(plain + " sk-abcdef123")) == plain + " [redacted]"


def test_failure_box_redacts_and_escapes():
    box = render.failure_box(RuntimeError(f"<401> key {API_KEY} / sk-live-abcdef123456"), (API_KEY,))
    assert API_KEY not in box and "sk-live" not in box and "&lt;401&gt;" in box
    assert box.startswith('<div class="error" role="alert">')


def test_importing_the_report_leaves_matplotlib_alone():
    """A notebook's backend and style survive ``import persona_spark.report`` (no matplotlib.use, no rcParams)."""
    probe = ("import matplotlib; before = dict(matplotlib.rcParams); import persona_spark.report; "
             "changed = sorted(k for k, v in matplotlib.rcParams.items() if before[k] != v); "
             "print(matplotlib.get_backend(), changed)")
    env = {**os.environ, "MPLBACKEND": "svg"}
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert shown.stdout.split() == ["svg", "[]"], shown.stderr[-2000:]
