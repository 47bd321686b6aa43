"""One self-contained HTML report of a run, written for the people who use personas.

``gather`` is the report's only contact with Spark: each section's small aggregates (counts per
persona or segment, a bounded sample of points, a few run rows) come back as pandas frames.
``render`` turns those frames into HTML and matplotlib figures without touching Spark, files or
matplotlib's global state; ``build`` runs both per section and writes the page (template:
``persona_spark/resources/report/page.html``) with each figure embedded as base64 and saved as PNG
next to it, so the file opens offline and can be mailed as is.
"""

from persona_spark.report.build import SECTIONS, Report, ReportSectionsFailed, Section, build_report
from persona_spark.report.gather import describe_labelers, metric_rows
from persona_spark.report.render import movement_sentences
from persona_spark.report.tables import REPORT_TABLES, WRITTEN_BY

__all__ = [
    "REPORT_TABLES",
    "SECTIONS",
    "WRITTEN_BY",
    "Report",
    "ReportSectionsFailed",
    "Section",
    "build_report",
    "describe_labelers",
    "metric_rows",
    "movement_sentences",
]
