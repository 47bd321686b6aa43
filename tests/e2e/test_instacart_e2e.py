"""The Instacart sample as a new user runs it: conf/instacart.yaml from ingest to the report.

A slice of the sample (its first orders) keeps this a test, not a benchmark; the source has no
timestamps and no prices, so segmentation must fall back to the order sequence without monetary.
"""

from __future__ import annotations

import pandas as pd
import pytest

from persona_spark.config import load_config
from persona_spark.stages import STAGES, RunContext
from persona_spark.tables.store import TableStore
from tests.conftest import REPO_ROOT, shared_path

pytestmark = pytest.mark.slow(minutes=3)  # end to end: run first, skipped by `-m "not slow"`

LINES = 6_000  # first lines of the sample: a few dozen customers


def test_instacart_sample_from_ingest_to_report(spark, tmp_path):
    lines = shared_path("instacart_sample", "order_lines_sample.csv")
    products = shared_path("instacart_sample", "products.csv")
    personas = shared_path("instacart_sample", "persona_names_51.json")
    part = tmp_path / "order_lines.csv"
    pd.read_csv(lines, nrows=LINES).to_csv(part, index=False)
    cfg = load_config(REPO_ROOT / "conf" / "instacart.yaml", [
        f"root={tmp_path}", f"ingest.source={part}", f"ingest.products={products}",
        f"personas={personas}", "gplr.budget_users=10", "gplr.rounds=2", "segment.ks=[2,3]",
    ])
    store = TableStore(spark, cfg.tables)
    ingested = STAGES["ingest"](RunContext(cfg, store))
    assert ingested["rows_in"] == LINES and ingested["rows_kept"] > 0.7 * LINES
    assert store.read_table("transactions").filter("order_number IS NULL").count() == 0  # the sequence is kept
    STAGES["build-graph"](RunContext(cfg, store))
    gplr = STAGES["gplr"](RunContext(cfg, store))
    assert gplr["persona_rows"].get("llm", 0) > 0
    segmented = STAGES["segment"](RunContext(cfg, store))
    parts = {p["part"]: p for p in segmented["rfm_parts"]}
    assert parts["recency"]["computed"] and "order sequence" in parts["recency"]["source"]
    assert not parts["monetary"]["computed"]
    assert {r["representation"] for r in segmented["silhouette"]} == {"personas", "rfm"}
    robust = {r["representation"]: r for r in STAGES["robustness"](RunContext(cfg, store))["robustness"]}
    assert robust["rfm"]["users"] > 0
    report = STAGES["report"](RunContext(cfg, store))
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert report["sections"]["segments"] == report["sections"]["robustness"] == "ok"
    assert "offline embedding labeler" in page and "estimated cost" not in page
    assert "RFM monetary: not computed" in page
