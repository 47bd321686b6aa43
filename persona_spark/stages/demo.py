"""The demo stage: the whole pipeline on the embedded demo shop, one stage after the other."""

from __future__ import annotations

import time

from persona_spark.config import Config
from persona_spark.io import TableStore

DEMO_STAGES = ["generate", "ingest", "build-graph", "gplr", "evaluate", "export-tripartite", "train", "cold-start",
               "segment", "report"]


def demo(cfg: Config, store: TableStore) -> dict:
    """The whole pipeline on the embedded demo shop: generate -> ... -> HTML report."""
    from persona_spark.stages import STAGES

    done = {}
    for name in DEMO_STAGES:
        started = time.perf_counter()
        summary = STAGES[name](cfg, store) or {}
        seconds = round(time.perf_counter() - started, 1)
        done[name] = {"seconds": seconds, **summary}
        headline = {k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and k != "details"}
        print(f"[{name:>11}] {seconds:6.1f}s  " + ", ".join(f"{k}={v}" for k, v in list(headline.items())[:8]), flush=True)
    return {"stages": done, "tables_root": store.location(""), "report": cfg.report.path}
