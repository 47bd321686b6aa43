"""Stage functions: the edge where tables are read, a library call is made, tables are written.

Each stage is ``fn(ctx) -> summary dict`` over one :class:`RunContext` (config, session, tables, persona
set, built once per run); the CLI, ``jobs/*.py``, the notebooks and the Databricks bundle call exactly the
functions in ``STAGES``, through ``RunContext.run``. One module per domain (``sources``, ``labeling``, ``gplr``,
``segments``, ``evaluate``, ``recommend``, ``report``, ``demo``); table names come from
``persona_spark.tables``. The library modules they call stay pure ``DataFrame -> DataFrame``:
reading and writing (label caches included) happen here.
"""

from __future__ import annotations

from persona_spark.stages.context import STAGES, RunContext, Stage
from persona_spark.stages.demo import DEMO_STAGES, demo
from persona_spark.stages.evaluate import evaluate_stage
from persona_spark.stages.gplr import affinity_stage, audience_stage, gplr_stage, reasons_stage, record_refresh
from persona_spark.stages.labeling import generate_personas_stage, label_items_stage, label_users_stage
from persona_spark.stages.recommend import RECOMMEND_RUNS_SCHEMA, cold_start_stage, export_stage, train_stage
from persona_spark.stages.report import report_stage
from persona_spark.stages.segments import robustness_stage, segment_stage
from persona_spark.stages.sources import build_graph_stage, generate, ingest_stage, load_paper_split

STAGES.update({
    "generate": generate,
    "ingest": ingest_stage,
    "build-graph": build_graph_stage,
    "load-paper-split": load_paper_split,
    "gplr": gplr_stage,
    "affinity": affinity_stage,
    "evaluate": evaluate_stage,
    "segment": segment_stage,
    "robustness": robustness_stage,
    "report": report_stage,
    "label-users": label_users_stage,
    "label-items": label_items_stage,
    "generate-personas": generate_personas_stage,
    "export-tripartite": export_stage,
    "train": train_stage,
    "cold-start": cold_start_stage,
    "audience": audience_stage,
    "reasons": reasons_stage,
    "demo": demo,
})

__all__ = ["DEMO_STAGES", "RECOMMEND_RUNS_SCHEMA", "STAGES", "RunContext", "Stage", "ingest_stage", "record_refresh"]
