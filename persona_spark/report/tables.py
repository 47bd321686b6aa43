"""The tables the report reads (a missing one's note names the stage that writes it: ``tables.WRITTEN_BY``)."""

from __future__ import annotations

from persona_spark.tables import WRITTEN_BY

REPORT_TABLES = (
    "personas", "persona_set", "users", "items", "edges", "segments", "segment_points", "segment_summary",
    "silhouette", "rfm_parts", "robustness", "evaluation", "evaluation_per_persona", "recommend_runs",
    "user_labels", "persona_transitions", "persona_flows", "persona_calibration", "gplr_runs",
    "persona_audit",
)

__all__ = ["REPORT_TABLES", "WRITTEN_BY"]
