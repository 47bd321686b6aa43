"""The report stage's library call: gather each section's frames, draw them, write the page and its PNGs."""

from __future__ import annotations

import html
import logging
import posixpath
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame

from persona_spark.config import ReportConf
from persona_spark.labeling.pricing import Rates
from persona_spark.redaction import redact
from persona_spark.report import gather, render
from persona_spark.report.tables import WRITTEN_BY
from persona_spark.tables import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    nav: str  # the link text in the navigation bar (short: ten of them share one row)
    needs: tuple[str, ...]
    lead: str  # one sentence: what the reader learns here and how to read it
    gather: Callable[[gather.Sources], Any]  # Spark -> small frames
    render: Callable[[Any, render.Canvas], str]  # those frames -> HTML
    any_of: bool = False  # the section shows what it can from any one of ``needs`` (else it needs them all)


SECTIONS = (
    Section("personas", "Who our customers are", "Personas", ("personas",),
            "How many customers carry each persona, and whether the labeler labelled them directly or they "
            "received the persona through their purchases (propagation).",
            gather.persona_counts, render.persona_distribution),
    Section("cooccurrence", "Personas that go together", "Combinations", ("personas",),
            "Read a row: of the customers with that persona, the share who also have each other persona. "
            "Dark cells are combinations worth a joint campaign.", gather.persona_pairs, render.cooccurrence),
    Section("segments", "Customer segments", "Segments", ("segments", "segment_summary", "silhouette"),
            "Customers grouped by their persona combination (personas → PCA → KMeans). Each segment is named "
            "after its dominant personas and the products its members buy more than other customers.",
            gather.segmentation, render.segments),
    Section("silhouette", "Segment quality: personas vs RFM", "Personas vs RFM", ("silhouette",),
            "Silhouette measures how well separated segments are (1 = perfectly). Persona-based segments are "
            "compared with the classic RFM segmentation put through the same pipeline.",
            gather.silhouettes, render.silhouette),
    Section("robustness", "Stability over time", "Stability", ("robustness",),
            "Each customer's purchases are split into an earlier and a later half; a stable representation "
            "keeps customers in the same place, so campaigns built on it keep reaching the right people.",
            gather.robustness, render.robustness),
    Section("drift", "Persona drift since the previous run", "Drift", ("persona_transitions", "persona_flows"),
            "Who changed persona between the last two monthly runs: each cell counts customers who lost the row "
            "persona and gained the column persona (\"no persona\" for a persona lost or gained alone).",
            gather.drift, render.drift),
    Section("calibration", "How sure the personas are", "Calibration", ("persona_calibration", "gplr_runs"),
            "Every propagated persona carries a probability. On customers the LLM labelled (held out while "
            "fitting), personas given 70 % should be right about 70 % of the time: dots on the diagonal.",
            gather.calibration, render.calibration),
    Section("quality", "Persona quality", "Quality", ("persona_audit", "evaluation"),
            "How well propagated personas match the labeler's own answers on a random audit sample of customers "
            "(every run measures it), and reference labels where there are any, on customers the run did not label.",
            gather.quality, render.quality, any_of=True),
    Section("recommendations", "Recommendations", "Recommendations", ("recommend_runs",),
            "Offline ranking quality of the recommenders trained on the purchase graph with personas.",
            gather.recommendations, render.recommendations),
    Section("labeling", "Labeling cost and token ledger", "Labeling cost", ("user_labels",),
            "Who labelled the prototypes and what it cost: customers, tokens and estimated spend per model and "
            "prompt version.", gather.labeling, render.labeling),
)


class ReportSectionsFailed(RuntimeError):
    """Sections failed while report.allow_partial is off: no report with holes is published."""


@dataclass
class Report:
    path: str
    figures: list[str]
    sections: dict[str, str]  # key -> "ok" | "missing" | "failed"


def build_report(
    tables: Mapping[str, DataFrame | None],
    path: str,
    persona_names: dict[int, str],
    conf: ReportConf | None = None,
    prices: Mapping[str, Rates] | None = None,
    title: str = "Customer personas",
    secrets: Iterable[str | None] = (),
) -> Report:
    """Render the report from whichever tables exist (``None`` = not written yet) to ``path`` (any URI).

    A section whose table is missing says which stage writes it. A section that fails raises
    ``ReportSectionsFailed`` (after every section was tried, so one run names them all) unless
    ``conf.allow_partial``; then it shows its error, with ``secrets`` and key-shaped strings redacted."""
    conf = conf or ReportConf()
    path = storage.absolute(str(path))
    free = Rates(0.0, 0.0, 0.0)
    sources = gather.Sources(tables, conf, prices or {"sync": free, "batch": free})
    labeler = gather.describe_labelers(tables.get("user_labels"), tables.get("personas"))
    canvas = render.Canvas(persona_names, conf, labeler, sources.prices, tuple(s for s in secrets if s))
    gathered: dict[str, Any] = {}
    bodies, status, failures = [], {}, {}
    for section in SECTIONS:
        missing = [t for t in section.needs if tables.get(t) is None]
        if missing and (not section.any_of or len(missing) == len(section.needs)):
            status[section.key], body = "missing", render.missing_note(missing, WRITTEN_BY)
        else:
            drawn = set(canvas.figures)
            try:
                gathered[section.key] = section.gather(sources)
                with render.styled():
                    body = f'<p class="lead">{html.escape(section.lead)}</p>' + section.render(gathered[section.key], canvas)
                status[section.key] = "ok"
            except Exception as error:
                log.exception("report section %s failed", section.key)
                for name in set(canvas.figures) - drawn:  # half a section's figures are not shown: not written either
                    del canvas.figures[name]
                failures[section.key] = error
                status[section.key], body = "failed", render.failure_box(error, canvas.secrets)
        bodies.append(render.section(section.key, section.title, status[section.key], body))
    if failures and not conf.allow_partial:
        listed = "; ".join(f"{key} ({type(e).__name__}: {e})" for key, e in failures.items())
        raise ReportSectionsFailed(
            redact(f"report sections failed: {listed}. Set report.allow_partial=true to write the report with "
                   "these sections showing their error.", canvas.secrets)
        ) from next(iter(failures.values()))

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    overview = render.overview(gather.table_sizes(tables), gathered, canvas)
    document = render.page(title, generated, [(s.key, s.nav) for s in SECTIONS], overview, "".join(bodies))
    folder = storage.join(posixpath.dirname(path), "figures")
    written = []
    for name, png in canvas.figures.items():
        written.append(storage.join(folder, f"{name}.png"))
        storage.write_bytes(written[-1], png)
    storage.write_text(path, redact(document, canvas.secrets))  # errors quoted anywhere on the page included
    log.info("report written to %s (%s)", path, status)
    return Report(path, written, status)
