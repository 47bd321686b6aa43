"""The report's text without a run: the reach sentence, the failure box (secrets redacted); importing it leaves
matplotlib alone."""

from __future__ import annotations

import os
import subprocess
import sys

from persona_spark.report import render


def test_reach_sentence_under_the_top_k_rule_and_when_everyone_is_reached():
    topk = {"ell": 1, "unlabelled_users": 50, "unreached_users": 5, "unreached_receive": {"no_persona": 5}}
    assert render.reach_sentence(topk).endswith("within 1 round trip (customer → product → customer) of any labelled "
                                                "customer, so no persona propagates to them; the top-k rule gives them none.")
    everyone = {**topk, "unreached_users": 0, "unreached_receive": {"no_persona": 0}}
    assert render.reach_sentence(everyone) == ("All 50 customers not labelled directly are within 1 round trip "
                                               "(customer → product → customer) of a labelled customer.")


API_KEY = "azure-5d1e0b7a93c24f68a1b2"  # the configured key's value (not key-shaped: found by value)


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
