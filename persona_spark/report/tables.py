"""The tables the report reads, and the stage that writes each (named in "not available" notes)."""

from __future__ import annotations

WRITTEN_BY = {
    "personas": "gplr",
    "persona_set": "generate",
    "users": "build-graph",
    "items": "build-graph",
    "edges": "build-graph",
    "segments": "segment",
    "segment_points": "segment",
    "segment_summary": "segment",
    "silhouette": "segment",
    "rfm_parts": "segment",
    "robustness": "robustness",
    "evaluation": "evaluate",
    "evaluation_per_persona": "evaluate",
    "recommend_runs": "train",
    "user_labels": "label-users",
    "persona_transitions": "gplr",
    "persona_flows": "gplr",
    "persona_calibration": "gplr",
}
REPORT_TABLES = tuple(WRITTEN_BY)
