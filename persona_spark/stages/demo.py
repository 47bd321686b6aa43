"""The demo stage: the whole pipeline on the embedded demo shop, one stage after the other."""

from __future__ import annotations

import time

from persona_spark.stages.context import RunContext, Stage
from persona_spark.stages.evaluate import evaluate_stage
from persona_spark.stages.gplr import gplr_stage
from persona_spark.stages.recommend import cold_start_stage, export_stage, train_stage
from persona_spark.stages.report import report_stage
from persona_spark.stages.segments import segment_stage
from persona_spark.stages.sources import build_graph_stage, generate, ingest_stage

# The demo's stages in order, under their CLI names.
DEMO_STAGES: dict[str, Stage] = {
    "generate": generate, "ingest": ingest_stage, "build-graph": build_graph_stage, "gplr": gplr_stage,
    "evaluate": evaluate_stage, "export-tripartite": export_stage, "train": train_stage,
    "cold-start": cold_start_stage, "segment": segment_stage, "report": report_stage,
}


def demo(ctx: RunContext) -> dict:
    """The whole pipeline on the embedded demo shop: generate -> ... -> HTML report."""
    done = {}
    for name, stage in DEMO_STAGES.items():
        started = time.perf_counter()
        summary = stage(ctx) or {}
        seconds = round(time.perf_counter() - started, 1)
        done[name] = {"seconds": seconds, **summary}
        headline = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and k != "details"}
        print(f"[{name:>11}] {seconds:6.1f}s  " + ", ".join(f"{k}={v}" for k, v in list(headline.items())[:8]), flush=True)
    return {"stages": done, "tables_root": ctx.store.location(""), "report": ctx.cfg.report.path}
