"""The HTML report renders from a run's tables: every section, decodable embedded figures, no network."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from datetime import datetime

import matplotlib
import matplotlib.image
import pytest

from persona_spark import report
from persona_spark.audit import AUDIT_SCHEMA
from persona_spark.config import Config, ReportConf
from persona_spark.labeling import label_schema
from persona_spark.stages import RECOMMEND_RUNS_SCHEMA, STAGES, RunContext
from tests.persona_world import N_USERS, PERSONAS, frames, world, write_persona_set, write_world  # noqa: F401 (module fixtures)

PRICES = (0.5, 2.0)  # USD per 1k prompt / completion tokens (synchronous)
CACHED_PRICE = 0.1  # USD per 1k cached prompt tokens (synchronous)
BATCH_PRICES = (0.25, 0.05, 1.0)  # USD per 1k prompt / cached prompt / completion tokens (Batch API)
# user, prompt tokens, cached prompt tokens, completion tokens, channel
LABEL_TOKENS = [(u, 400 + u, 128 * (u % 2), 20 + u % 3, "batch" if u < 4 else "sync") for u in range(12)]
# the latest gplr run's gplr.reach_counts
REACH = {"ell": 2, "unlabelled_users": 28, "unreached_users": 3, "unreached_receive": {"item_signal": 1, "prior_only": 2}}
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def run_tables(spark) -> dict:
    """Small rows in the schemas the evaluate, train, label-users and robustness stages write."""
    ts = datetime(2024, 6, 1)
    labels = [
        (u, [PERSONAS.names[u % 3]], [u % 3], "ok", None, "gpt-4o-mini", "user_v1", PERSONAS.version, f"h{u}",
         prompt, completion, 900 + u, 1, "{}", ts, cached, channel)
        for u, prompt, cached, completion, channel in LABEL_TOKENS
    ]
    runs = [
        ("r1", model, seed, None, None, {f"{m}@{k}": base + seed / 100 + k / 1000 for m in ("ndcg", "f1", "recall") for k in (5, 10, 20)},
         0.3, 3, 4, 12.5, "cpu", f"models/{model}-seed{seed}")
        for model, base in (("lgcn3", 0.30), ("mf", 0.20)) for seed in (0, 1)
    ]
    return {
        "evaluation": spark.createDataFrame(
            [("20240601T000000", "planted_personas", 28, 0.8123, 0.7912, 0.8, 0.82, 0.41, "learned", ts)],
            "run_id string, reference string, users long, micro_f1 double, macro_f1 double, precision double, "
            "recall double, baseline_micro_f1 double, method string, run_ts timestamp",
        ),
        "evaluation_per_persona": spark.createDataFrame(
            [("20240601T000000", p, 8, 10, 9, 0.8, 0.89, 0.84, ts) for p in range(3)],
            "run_id string, persona_idx int, tp long, predicted long, actual long, precision double, recall double, "
            "f1 double, run_ts timestamp",
        ),
        # r1 is the latest run by time; "r9-older" sorts after it by id and must not be shown
        "gplr_runs": spark.createDataFrame(
            [("r1", datetime(2024, 7, 1), json.dumps({"reach": REACH}), "failed", 9000, 1000, 480, 1800, 200),
             ("r9-older", datetime(2024, 6, 1), json.dumps({"reach": {**REACH, "unreached_users": 9}}), "passed", 10, 1,
              500, 5, 1)],
            "run_id string, run_ts timestamp, details string, audit_guard string, prompt_tokens long, "
            "completion_tokens long, audit_users long, audit_prompt_tokens long, audit_completion_tokens long"),
        # the latest run's audit (its guard failed) and the one before; r0 is older still and not shown
        "persona_audit": spark.createDataFrame(
            [(run, ts_, metric, None, est, est - 0.021, est + 0.018, 480, None, "bootstrap", 0.95)
             for run, ts_, base in (("r1", datetime(2024, 7, 1), 0.752), ("r9-older", datetime(2024, 6, 1), 0.701),
                                    ("r0", datetime(2024, 5, 1), 0.333))
             for metric, est in (("micro_f1", base), ("precision", base + 0.1), ("recall", base - 0.1),
                                 ("macro_f1", base - 0.2))]
            + [("r1", datetime(2024, 7, 1), "recall", p, 0.5 + p / 10, 0.3, 0.7, 480, 10 + p, "wilson", 0.95)
               for p in range(3)],
            AUDIT_SCHEMA),
        "recommend_runs": spark.createDataFrame(runs, RECOMMEND_RUNS_SCHEMA),
        "user_labels": spark.createDataFrame(labels, label_schema("user_idx")),
        "robustness": spark.createDataFrame(
            [("personas", 40, 31, 31 / 40), ("rfm", 40, 4, 0.1)],
            "representation string, users long, unchanged long, share_unchanged double",
        ),
        "persona_transitions": spark.createDataFrame(
            [("r0", "r1", ts, datetime(2024, 7, 1), p, PERSONAS.names[p], 10, 10 + 2 * p - 2, 6, 4 + 2 * p - 2, 4, 40, 13, 13 / 40)
             for p in range(3)],
            "from_run_id string, to_run_id string, from_ts timestamp, to_ts timestamp, persona_idx int, persona string, "
            "customers_before long, customers_after long, kept long, gained long, lost long, customers long, "
            "customers_changed long, share_changed double"),
        "persona_flows": spark.createDataFrame(
            [("r0", "r1", 0, 0, 6), ("r0", "r1", 0, 2, 7), ("r0", "r1", -1, 1, 2), ("r0", "r1", 1, -1, 1)],
            "from_run_id string, to_run_id string, from_persona_idx int, to_persona_idx int, customers long"),
        "persona_calibration": spark.createDataFrame(
            [("r1", b, b / 4, (b + 1) / 4, 100 - 20 * b, b / 4 + 0.1, b / 4 + 0.05) for b in range(4)]
            + [("r9-older", b, b / 4, (b + 1) / 4, 50, b / 4 + 0.1, b / 4 + 0.4) for b in range(4)],
            "run_id string, bin int, lower double, upper double, pairs long, mean_predicted double, observed double"),
    }


@pytest.fixture(scope="module")
def rendered(spark, frames, tmp_path_factory):
    """A full run's tables in a store (segment run for real), then the report stage."""
    from persona_spark.config import TablesConf
    from persona_spark.tables.store import TableStore

    root = tmp_path_factory.mktemp("report_run")
    store = TableStore(spark, TablesConf(root=str(root / "tables")))
    write_world(store, frames)
    for name, frame in run_tables(spark).items():
        store.write_table(frame, name)
    cfg = Config.model_validate(
        {
            "personas": str(write_persona_set(root / "tiny_shop.yaml")),
            "segment": {"ks": [2, 4], "seed": 1},
            "report": {"path": str(root / "report" / "index.html")},
            "labeling": {"openai": {
                "prices": {"prompt": PRICES[0], "completion": PRICES[1], "cached_prompt": CACHED_PRICE},
                "batch_prices": dict(zip(("prompt", "cached_prompt", "completion"), BATCH_PRICES))}},
        }
    )
    STAGES["segment"](RunContext(cfg, store))
    summary = STAGES["report"](RunContext(cfg, store))
    return summary, (root / "report" / "index.html").read_text(encoding="utf-8")


def test_report_has_every_section_rendered(rendered):
    summary, page = rendered
    assert summary["sections"] == {s.key: "ok" for s in report.SECTIONS}
    for section in report.SECTIONS:
        assert f'<section id="{section.key}" class="section">' in page
        assert section.title.replace("&", "&amp;") in page
    assert "could not be rendered" not in page and "Not available" not in page


def test_report_figures_decode_and_match_the_png_files(rendered):
    summary, page = rendered
    embedded = [base64.b64decode(data) for data in IMG.findall(page)]
    files = {p: open(p, "rb").read() for p in summary["figures"]}
    assert len(embedded) == len(files) >= 7  # one per figure, all also saved next to the page
    assert sorted(embedded) == sorted(files.values())
    for data in embedded:
        image = matplotlib.image.imread(io.BytesIO(data), format="png")
        assert image.shape[0] > 100 and image.shape[1] > 100
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must open offline"


def test_report_states_the_numbers_of_the_run(rendered):
    _, page = rendered
    sync = {"prompt": PRICES[0], "cached": CACHED_PRICE, "completion": PRICES[1]}
    batch = dict(zip(("prompt", "cached", "completion"), BATCH_PRICES))
    rates = {"sync": sync, "batch": batch}
    cost = sum(((p - k) * rates[ch]["prompt"] + k * rates[ch]["cached"] + c * rates[ch]["completion"]) / 1000
               for _, p, k, c, ch in LABEL_TOKENS)
    tokens = sum(p + c for _, p, _, c, _ in LABEL_TOKENS)
    assert f"${cost:,.2f}" in page and f"{tokens:,}" in page
    assert "Cost per refresh" in page and "2024-06-01" in page  # one day of labeling, sync and batch rows apart
    assert f"{N_USERS:,} customers have at least one persona; 12 of them were labelled by the LLM" in page
    assert ("3 of the 28 customers not labelled directly (10.7 %) are not within 2 round trips (customer → product → "
            "customer) of any labelled customer, so no persona propagates to them; instead the assignment model gave "
            "them personas from the labels of the products they bought (1) or from how common each persona is alone (2)."
            in html.unescape(page))  # the latest run's (r1) reach
    assert "0.812" in page  # micro F1 of the evaluation row
    text = html.unescape(page)
    # the audit: the latest run beside the previous one, its recall per persona, and its failed guard up top
    assert "0.752 (0.731–0.770)" in text and "0.701 (0.680–0.719)" in text and "0.333" not in text
    assert "this run 2024-07-01 00:00 (r1), 480 customers" in text and "previous run 2024-06-01 00:00" in text
    assert f"<td>{PERSONAS.names[2]}</td>" in text and "0.700 (0.300–0.700)" in text
    alert = "Run r1: audit micro F1 0.752 (0.731–0.770) is below the guard gplr.min_audit_micro_f1"
    assert text.count(alert) == 2 and text.index(alert) < text.index('<section id="personas"')  # headline too
    assert "The latest gplr run (r1) labelled 480 customers for its quality audit, 2,000 of its 10,000 tokens (20.0 %)" \
        in text  # the audit's share of the run's spend, in the labeling ledger
    assert "0.3150 ± 0.0071" in page  # lgcn3 ndcg@10 over seeds 0 and 1: 0.31 and 0.32
    assert "77.5 %" in page  # personas unchanged in the robustness table
    assert "<b>13</b> of 40 customers (32.5 %) changed their persona set" in page
    assert f"7 customers dropped <b>{PERSONAS.names[0]}</b> and picked up <b>{PERSONAS.names[2]}</b>" in page
    assert f"2 customers gained <b>{PERSONAS.names[1]}</b> without losing a persona" in page
    assert "Expected calibration error 5.0 points" in page  # every bin of the latest run (r1) 0.05 off
    for name in PERSONAS.names:
        assert name in page


def test_missing_tables_say_which_stage_to_run(frames, store, tmp_path):
    write_world(store, frames, names=("personas", "persona_set"))
    cfg = Config.model_validate(
        {"personas": str(write_persona_set(tmp_path / "p.yaml")), "report": {"path": str(tmp_path / "r" / "index.html")}}
    )
    summary = STAGES["report"](RunContext(cfg, store))
    assert summary["sections"]["personas"] == "ok" and summary["sections"]["cooccurrence"] == "ok"
    assert {k for k, v in summary["sections"].items() if v == "missing"} == {
        "segments", "silhouette", "robustness", "quality", "recommendations", "labeling", "drift", "calibration"
    }
    page = (tmp_path / "r" / "index.html").read_text()
    for stage in ("segment", "robustness", "evaluate", "train", "label-users"):
        assert f"Not available — run persona-spark {stage}" in page


def test_a_broken_section_fails_the_report(spark, frames, tmp_path):
    broken = spark.createDataFrame([("personas", 3)], "representation string, users long")  # no share_unchanged
    tables = {"personas": frames["personas"], "robustness": broken}
    with pytest.raises(report.ReportSectionsFailed, match=r"robustness \(KeyError: 'share_unchanged'\).*allow_partial"):
        report.build_report(tables, tmp_path / "index.html", dict(enumerate(PERSONAS.names)))
    assert not (tmp_path / "index.html").exists() and not (tmp_path / "figures").exists()


def test_allow_partial_shows_the_broken_section_and_keeps_the_rest(spark, frames, tmp_path):
    broken = spark.createDataFrame([("personas", 3)], "representation string, users long")  # no share_unchanged
    tables = {"personas": frames["personas"], "robustness": broken}
    matplotlib.get_backend()  # resolves rcParams' lazy "auto" backend, so the copy can be compared
    style = matplotlib.rcParams.copy()
    result = report.build_report(tables, tmp_path / "index.html", dict(enumerate(PERSONAS.names)),
                                 ReportConf(allow_partial=True))
    assert matplotlib.rcParams == style, "the report's figure style must not leak into the process"
    assert result.sections["robustness"] == "failed" and result.sections["personas"] == "ok"
    page = (tmp_path / "index.html").read_text()
    assert '<section id="robustness" class="section failed">' in page
    assert "This section could not be rendered.</b> KeyError: &#x27;share_unchanged&#x27;" in page
    assert sorted(p.rsplit("/", 1)[-1] for p in result.figures) == ["persona_cooccurrence.png", "persona_distribution.png"]


API_KEY = "azure-7f3c9e21b04d4a6c8e5f"  # the configured key's value (not key-shaped: found by value)


def test_report_stage_redacts_the_configured_key_from_labeling_errors(spark, frames, store, tmp_path, monkeypatch):
    monkeypatch.setenv("PERSONA_REPORT_TEST_KEY", API_KEY)
    ts = datetime(2024, 6, 1)
    errors = [f"401 Unauthorized: invalid key {API_KEY}", f"403 key ...{API_KEY[-10:]} revoked",
              "429 Bearer tok_4f9a8b7c6d5e rate limited"]
    labels = [(u, None, None, "error", errors[u % 3], "gpt-4o-mini", "user_v1", PERSONAS.version, f"h{u}",
               0, 0, 10, 1, "{}", ts, 0, "sync") for u in range(6)]
    write_world(store, frames, names=("personas", "persona_set"))
    store.write_table(spark.createDataFrame(labels, label_schema("user_idx")), "user_labels")
    cfg = Config.model_validate({"personas": str(write_persona_set(tmp_path / "p.yaml")),
                                 "labeling": {"openai": {"api_key_env": "PERSONA_REPORT_TEST_KEY"}},
                                 "report": {"path": str(tmp_path / "r" / "index.html")}})
    summary = STAGES["report"](RunContext(cfg, store))
    assert summary["sections"]["labeling"] == "ok"
    page = (tmp_path / "r" / "index.html").read_text()
    assert "Most frequent errors" in page and "401 Unauthorized: invalid key [redacted]" in page
    assert API_KEY[:8] not in page and API_KEY[-8:] not in page and "tok_4f9a8b7c6d5e" not in page
    assert "403 key ...[redacted] revoked" in page and "429 [redacted] rate limited" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
WINDOW_WIDTH = 1400
# Written into the page's DOM once it has loaded; --dump-dom then prints it.
MEASURE_NAV = """<script>window.addEventListener('load', function () {
  var nav = document.querySelector('nav');
  var rights = Array.from(nav.querySelectorAll('a')).map(function (a) { return a.getBoundingClientRect().right; });
  document.documentElement.dataset.nav = JSON.stringify({window: window.innerWidth, navScroll: nav.scrollWidth,
    navClient: nav.clientWidth, linksRight: Math.max.apply(null, rights), links: rights.length,
    pageScroll: document.documentElement.scrollWidth, navTop: nav.getBoundingClientRect().top,
    navHeight: nav.getBoundingClientRect().height});
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium (Debian: apt-get install chromium)")
def test_navigation_fits_a_1400_px_window(rendered, tmp_path):
    _, page = rendered
    probe = tmp_path / "index.html"
    probe.write_text(page.replace("</body>", MEASURE_NAV + "</body>"), encoding="utf-8")
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--window-size={WINDOW_WIDTH},900", "--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([*browser, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    found = re.search(r'data-nav="([^"]+)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    nav = json.loads(html.unescape(found.group(1)))
    assert nav["window"] == WINDOW_WIDTH and nav["links"] == len(report.SECTIONS)
    assert nav["navScroll"] <= nav["navClient"] and nav["linksRight"] <= WINDOW_WIDTH, nav
    assert nav["pageScroll"] <= WINDOW_WIDTH, nav  # no horizontal scrolling anywhere on the page

    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", probe.as_uri()], capture_output=True, timeout=120, check=True)
    image = matplotlib.image.imread(shot)
    assert image.shape[1] == WINDOW_WIDTH
    row = image[int(nav["navTop"] + nav["navHeight"] / 2), :, :3]
    navy = matplotlib.colors.to_rgb("#16497c")
    assert (abs(row - navy).max(axis=1) < 0.02).mean() > 0.5  # the bar's colour across the width, links on it


def test_report_names_the_offline_labeler_shows_no_cost_and_the_rfm_parts(spark, frames, tmp_path):
    ts = datetime(2024, 6, 1)
    labels = [(u, [PERSONAS.names[u % 3]], [u % 3], "ok", None, "all-MiniLM-L6-v2", "embed_v2-x", PERSONAS.version,
               f"h{u}", 0, 0, 0, 0, "{}", ts, 0, "offline") for u in range(12)]
    silhouette = spark.createDataFrame([("personas", 2, 2, 0.5), ("rfm", 2, 2, 0.4)],
                                       "representation string, k int, clusters int, silhouette double")
    parts = spark.createDataFrame(
        [("recency", True, "days_since_prior_order of each customer's latest order (order sequence)"),
         ("frequency", True, "distinct orders (order_id)"),
         ("monetary", False, "no unit prices (unit_price) in transactions")],
        "part string, computed boolean, source string",
    )
    # a shop without reference labels: the quality section is the audit of its one run
    audit = spark.createDataFrame([("r1", ts, "micro_f1", None, 0.7, 0.68, 0.72, 300, None, "bootstrap", 0.95)],
                                  AUDIT_SCHEMA)
    tables = {"personas": frames["personas"], "user_labels": spark.createDataFrame(labels, label_schema("user_idx")),
              "silhouette": silhouette, "rfm_parts": parts, "persona_audit": audit}
    result = report.build_report(tables, tmp_path / "index.html", dict(enumerate(PERSONAS.names)))
    assert result.sections["labeling"] == result.sections["personas"] == result.sections["silhouette"] == "ok"
    assert result.sections["quality"] == "ok"
    page = (tmp_path / "index.html").read_text()
    assert "12 of them were labelled by the offline embedding labeler (all-MiniLM-L6-v2)" in page
    assert "the LLM" not in page and "$" not in page and "estimated cost" not in page
    assert "RFM monetary: not computed, no unit prices (unit_price) in transactions." in page
    assert "RFM recency: from days_since_prior_order" in page
    text = html.unescape(page)
    assert "0.700 (0.680–0.720)" in text and "this run 2024-06-01 00:00 (r1), 300 customers" in text
    assert "previous run 2" not in text and "Quality alert" not in text
    assert "No reference labels scored" in text
