"""The report stage: the HTML report from whichever tables of the run exist."""

from __future__ import annotations

from persona_spark import report as report_lib
from persona_spark.labeling.pricing import price_table
from persona_spark.stages.common import persona_names
from persona_spark.stages.context import RunContext


def report_stage(ctx: RunContext) -> dict:
    """Render the HTML report (and its PNG figures) from whichever tables of the run exist."""
    cfg = ctx.cfg
    found = {name: ctx.table(name) for name in report_lib.REPORT_TABLES}
    names = {row["persona_idx"]: row["name"] for row in persona_names(ctx).collect()}
    # The configured key (the run registered it) is redacted from the page as it is written.
    result = report_lib.build_report(found, cfg.report.path, names, cfg.report, price_table(cfg.labeling.openai))
    return {"report": result.path, "figures": result.figures, "sections": result.sections}
