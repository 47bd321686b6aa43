"""One self-contained HTML report of a run, written for the people who use personas.

Only small aggregates leave Spark (counts per persona or segment, a bounded sample of points, a few
run rows). Each figure is drawn with matplotlib, saved as PNG next to the HTML and embedded in it
as base64, so the file opens offline and can be mailed as is. A section whose table is missing says
which stage writes it; a section that fails to draw says so and the rest of the report still renders.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
import posixpath
from typing import Callable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from persona_spark import storage  # noqa: E402
from persona_spark.config import ReportConf  # noqa: E402
from persona_spark.labeling.pricing import Rates, cost_column  # noqa: E402
from persona_spark.tables import WRITTEN_BY  # noqa: E402

log = logging.getLogger(__name__)

# The tables the report reads; a missing one's note names the stage that writes it (tables.WRITTEN_BY).
REPORT_TABLES = (
    "personas", "persona_set", "users", "items", "edges", "segments", "segment_points", "segment_summary",
    "silhouette", "rfm_parts", "robustness", "evaluation", "evaluation_per_persona", "recommend_runs",
    "user_labels", "persona_transitions", "persona_flows", "persona_calibration",
)

LLM_COLOUR = "#1f5f99"
PROPAGATED_COLOUR = "#8fbce6"
RFM_COLOUR = "#d08a2c"
INK = "#1f2933"
K_TOLERANCE = 0.05  # silhouette slack when the report picks the segmentation to show
# ndcg@10, ndcg_at_10, ndcg_10 ... (but not val_ndcg_at_10: validation is not a test result)
METRIC_COLUMN = re.compile(r"^(ndcg|f1|recall|precision|hr|hit|mrr|map)(?:@|_at_|_)(\d+)$", re.IGNORECASE)

plt.rcParams.update(
    {
        "font.size": 10.5,
        "axes.titlesize": 12,
        "axes.titleweight": "bold",
        "axes.titlelocation": "left",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.edgecolor": "#9aa5b1",
        "axes.labelcolor": INK,
        "xtick.color": INK,
        "ytick.color": INK,
        "text.color": INK,
        "figure.dpi": 110,
        "savefig.dpi": 110,
    }
)


# ---- figures and html helpers ---------------------------------------------------------------------
class Figures:
    """Saves each figure as ``<folder>/<name>.png`` and returns an <img> embedding the same bytes."""

    def __init__(self, folder: str):
        self.folder = folder
        self.written: list[str] = []

    def embed(self, fig, name: str, alt: str) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight", facecolor="white")
        plt.close(fig)
        data = buffer.getvalue()
        path = storage.join(self.folder, f"{name}.png")
        storage.write_bytes(path, data)
        self.written.append(path)
        encoded = base64.b64encode(data).decode("ascii")
        return f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}"></figure>'


def _table(frame: pd.DataFrame, percent: tuple[str, ...] = (), decimals: int = 3) -> str:
    """A pandas frame as an escaped HTML table; ``percent`` columns shown as 12.3 %."""
    shown = frame.copy()
    for column in shown.columns:
        values = shown[column]
        if column in percent:
            shown[column] = values.map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f} %")
        elif pd.api.types.is_float_dtype(values):
            shown[column] = values.map(lambda v: "" if pd.isna(v) else f"{v:,.{decimals}f}")
        elif pd.api.types.is_integer_dtype(values):
            shown[column] = values.map(lambda v: f"{v:,}")
    return shown.to_html(index=False, classes="data", border=0, escape=True, na_rep="")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _cards(pairs: list[tuple[str, str]]) -> str:
    cells = "".join(
        f'<div class="card"><div class="value">{html.escape(v)}</div><div class="label">{html.escape(k)}</div></div>'
        for k, v in pairs
    )
    return f'<div class="cards">{cells}</div>'


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _segment_colours(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20" if n <= 20 else "turbo")
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


# ---- the report's context ----------------------------------------------------------------------------
@dataclass
class Context:
    tables: Mapping[str, DataFrame | None]
    persona_names: dict[int, str]
    conf: ReportConf
    figures: Figures
    prices: Mapping[str, Rates]  # per channel (sync / batch), labeling.pricing.price_table
    facts: dict = field(default_factory=dict)  # headline numbers gathered by sections for the overview

    def name(self, idx: int) -> str:
        return self.persona_names.get(int(idx), f"persona {idx}")

    def labeler(self) -> str:
        """Who labelled the prototypes, from the ``model`` of their cached answers (a few rows)."""
        if "labeler" not in self.facts:
            self.facts["labeler"] = describe_labelers(self.tables.get("user_labels"), self.tables.get("personas"))
        return self.facts["labeler"]


EMBEDDING_LABELER_MODEL = "all-MiniLM-L6-v2"  # the offline labeler's model (labeling.backends.EMBEDDING_MODEL)


def describe_labelers(user_labels: DataFrame | None, personas: DataFrame | None) -> str:
    """"the offline embedding labeler (all-MiniLM-L6-v2)", "the LLM (gpt-4o-mini)", "recorded labels (...)"."""
    if user_labels is None or "model" not in user_labels.columns:
        return "the labeler"
    labels = user_labels.filter(F.col("status") == "ok") if "status" in user_labels.columns else user_labels
    if personas is not None:
        direct = personas.filter(F.col("source") == "llm").select("user_idx").distinct()
        asked = labels.join(direct, "user_idx", "left_semi")
        labels = asked if asked.limit(1).count() else labels
    models = sorted(r["model"] for r in labels.select("model").distinct().limit(5).collect() if r["model"])
    if not models:
        return "the labeler"

    def wording(model: str) -> str:
        if model == EMBEDDING_LABELER_MODEL:
            return f"the offline embedding labeler ({model})"
        if model.startswith("recorded"):
            return f"recorded labels ({model})"
        return f"the LLM ({model})"

    return " and ".join(wording(m) for m in models)


@dataclass(frozen=True)
class Section:
    key: str
    title: str
    needs: tuple[str, ...]
    lead: str  # one sentence: what the reader learns here and how to read it
    build: Callable[[Context], str]


# ---- sections ------------------------------------------------------------------------------------------
def _persona_distribution(ctx: Context) -> str:
    personas = ctx.tables["personas"]
    counts = (
        personas.groupBy("persona_idx", "source").agg(F.countDistinct("user_idx").alias("users")).toPandas()
    )
    wide = counts.pivot_table(index="persona_idx", columns="source", values="users", fill_value=0, aggfunc="sum")
    for source in ("llm", "propagated"):
        if source not in wide.columns:
            wide[source] = 0
    wide["total"] = wide["llm"] + wide["propagated"]
    wide = wide.sort_values("total", ascending=False)
    users = personas.select("user_idx").distinct().count()
    per_user = (
        personas.groupBy("user_idx").agg(F.countDistinct("persona_idx").alias("n")).groupBy("n").count().toPandas()
    ).sort_values("n")
    llm_users = personas.filter(F.col("source") == "llm").select("user_idx").distinct().count()
    ctx.facts.update(users_with_personas=users, llm_users=llm_users)

    shown = wide.head(ctx.conf.top_personas).iloc[::-1]
    labels = [_short(ctx.name(i), 34) for i in shown.index]
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(11, 0.32 * len(shown) + 1.6), gridspec_kw={"width_ratios": [3, 1.1]}
    )
    ax.barh(labels, shown["llm"], color=LLM_COLOUR, label=f"labelled by {_short(ctx.labeler(), 48)}")
    ax.barh(labels, shown["propagated"], left=shown["llm"], color=PROPAGATED_COLOUR, label="propagated (GPLR)")
    for y, total in enumerate(shown["total"]):
        ax.text(total, y, f"  {100 * total / users:.0f} %", va="center", fontsize=9)
    ax.set_xlabel("customers")
    ax.set_title("Customers per persona")
    ax.legend(loc="lower right", frameon=False)
    ax.margins(x=0.12)
    ax2.bar(per_user["n"].astype(str), per_user["count"], color=LLM_COLOUR)
    ax2.set_title("Personas per customer")
    ax2.set_xlabel("number of personas")
    ax2.set_ylabel("customers")
    img = ctx.figures.embed(fig, "persona_distribution", "customers per persona, labelled vs propagated")

    table = pd.DataFrame(
        {
            "persona": [ctx.name(i) for i in wide.index],
            "customers": wide["total"].astype(int).values,
            "share of customers": (wide["total"] / users).values,
            "labelled directly (prototypes)": wide["llm"].astype(int).values,
            "propagated": wide["propagated"].astype(int).values,
        }
    )
    note = _note(
        f"{users:,} customers have at least one persona; {llm_users:,} of them were labelled by {ctx.labeler()} "
        "(the prototypes), the others received personas by propagation over the purchase graph."
    )
    return note + img + "<details><summary>All personas as a table</summary>" + _table(
        table, percent=("share of customers",)
    ) + "</details>"


def _cooccurrence(ctx: Context) -> str:
    assigned = ctx.tables["personas"].select("user_idx", "persona_idx").distinct()
    pairs = (
        assigned.alias("a")
        .join(assigned.alias("b"), "user_idx")
        .groupBy(F.col("a.persona_idx").alias("row"), F.col("b.persona_idx").alias("col"))
        .count()
        .toPandas()
    )
    matrix = pairs.pivot_table(index="row", columns="col", values="count", fill_value=0)
    diagonal = pd.Series(np.diag(matrix.reindex(columns=matrix.index).fillna(0).values), index=matrix.index)
    top = diagonal.sort_values(ascending=False).head(ctx.conf.top_personas).index
    conditional = matrix.reindex(index=top, columns=top).fillna(0).div(diagonal[top], axis=0)
    values = conditional.values.astype(float)
    np.fill_diagonal(values, np.nan)
    names = [_short(ctx.name(i), 30) for i in top]
    size = 0.42 * len(top) + 2.5
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    cmap = plt.get_cmap("Blues").copy()
    cmap.set_bad("#eef1f4")
    top_share = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    vmax = min(1.0, max(0.1, math.ceil(top_share * 10) / 10))  # scale to the strongest overlap for contrast
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=vmax)
    ax.set_xticks(range(len(top)), names, rotation=60, ha="right")
    ax.set_yticks(range(len(top)), names)
    ax.spines[:].set_visible(False)
    if len(top) <= 25:
        for r in range(len(top)):
            for c in range(len(top)):
                if not math.isnan(values[r, c]) and values[r, c] >= 0.005:
                    ax.text(c, r, f"{100 * values[r, c]:.0f}", ha="center", va="center", fontsize=7.5,
                            color="white" if values[r, c] > 0.55 * vmax else INK)
    ax.set_title("Of the customers with the row persona, % who also have the column persona")
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02, format=PercentFormatter(xmax=1, decimals=0))
    strongest = (
        conditional.where(~np.eye(len(top), dtype=bool)).stack().sort_values(ascending=False).head(3)
    )
    bullets = "".join(
        f"<li>{100 * share:.0f} % of <b>{html.escape(ctx.name(r))}</b> customers are also "
        f"<b>{html.escape(ctx.name(c))}</b></li>"
        for (r, c), share in strongest.items()
    )
    return ctx.figures.embed(fig, "persona_cooccurrence", "persona co-occurrence heat map") + (
        f"<p>Strongest overlaps:</p><ul>{bullets}</ul>" if bullets else ""
    )


def _chosen_k(ctx: Context, silhouettes: pd.DataFrame) -> int | None:
    """``report.k``, else the smallest k whose persona silhouette is within ``K_TOLERANCE`` of the best:
    silhouette tends to creep up with k, and a marketer reads 15 segments, not 35."""
    if ctx.conf.k is not None:
        return ctx.conf.k
    persona_rows = silhouettes[(silhouettes["representation"] == "personas") & silhouettes["silhouette"].notna()]
    if persona_rows.empty:
        return None
    good = persona_rows[persona_rows["silhouette"] >= persona_rows["silhouette"].max() - K_TOLERANCE]
    return int(good["k"].min())


def _segment_name(personas) -> str:
    """The segment's majority personas (held by ≥ half its members), most characteristic (lift) first."""
    personas = list(personas) if personas is not None else []
    majority = sorted((p for p in personas if p["share"] >= 0.5), key=lambda p: -p["lift"])[:2]
    chosen = majority or personas[:1]
    return " + ".join(p["name"] for p in chosen) if chosen else "no persona"


def _segments(ctx: Context) -> str:
    silhouettes = ctx.tables["silhouette"].toPandas()
    k = _chosen_k(ctx, silhouettes)
    summary = ctx.tables["segment_summary"]
    available = sorted(int(r["k"]) for r in summary.select("k").distinct().collect())
    if k is None or k not in available:
        return _note(f"No segmentation with k={k} in segment_summary (available: {available}).")
    rows = summary.filter(F.col("k") == k).toPandas().sort_values("size", ascending=False)
    rows["name"] = rows["personas"].map(_segment_name)
    colours = dict(zip(sorted(rows["segment"]), _segment_colours(len(rows))))
    ctx.facts["segments_k"] = k

    fig, ax = plt.subplots(figsize=(11, 0.34 * len(rows) + 1.4))
    ordered = rows.iloc[::-1]
    ax.barh([f"S{s}" for s in ordered["segment"]], ordered["size"], color=[colours[s] for s in ordered["segment"]])
    for y, (size, share, name) in enumerate(zip(ordered["size"], ordered["share"], ordered["name"])):
        ax.text(size, y, f"  {100 * share:.1f} %  ·  {name}", va="center", fontsize=9)
    ax.set_xlabel("customers")
    largest = ordered["size"].max()
    ax.set_xlim(0, largest * 2.6)  # room for the names
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= largest * 1.05])
    ax.spines["bottom"].set_bounds(0, largest * 1.05)
    ax.set_title(f"Segment sizes (k = {k}), named after their characteristic majority personas")
    parts = [ctx.figures.embed(fig, "segment_sizes", f"segment sizes for k={k}")]

    points = _projection_sample(ctx, k)
    if points is not None and not points.empty:
        parts.append(_projection_figures(ctx, points, colours, dict(zip(rows["segment"], rows["name"])), k))
    else:
        parts.append(_note("No projection points (segment_points) for this segmentation."))

    table = pd.DataFrame(
        {
            "segment": rows["segment"].map(lambda v: f"S{v}"),
            "name": rows["name"],
            "customers": rows["size"].astype(int),
            "share": rows["share"],
            "dominant personas (share of segment, lift vs all)": rows["personas"].map(
                lambda ps: "; ".join(f"{p['name']} ({100 * p['share']:.0f} %, ×{p['lift']:.1f})" for p in ps)
            ),
            "buys more than other customers": rows["top_items"].map(
                lambda items: "; ".join(str(i["item_name"]).strip().capitalize() for i in items)
            ),
        }
    )
    parts.append("<h3>What each segment is</h3>" + _table(table, percent=("share",)))
    return "".join(parts)


def _projection_sample(ctx: Context, k: int) -> pd.DataFrame | None:
    points, segments = ctx.tables.get("segment_points"), ctx.tables["segments"]
    if points is None:
        return None
    chosen = segments.filter((F.col("representation") == "personas") & (F.col("k") == k)).select("user_idx", "segment")
    joined = points.filter(F.col("representation") == "personas").join(chosen, "user_idx")
    total = joined.count()
    if total > ctx.conf.max_points:
        joined = joined.sample(fraction=min(1.0, 1.3 * ctx.conf.max_points / total), seed=7)
    return joined.limit(ctx.conf.max_points).select("x", "y", "z", "segment").toPandas()


def _projection_figures(ctx: Context, points: pd.DataFrame, colours: dict, names: dict, k: int) -> str:
    # Persona vectors are discrete, so many customers share a point; a little jitter shows the crowd.
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 0.025, size=(len(points), 3))
    xyz = points[["x", "y", "z"]].to_numpy() + jitter
    point_colours = [colours.get(s, "#999999") for s in points["segment"]]
    fig = plt.figure(figsize=(12, 5.6))
    ax = fig.add_subplot(1, 2, 1)
    ax.scatter(xyz[:, 0], xyz[:, 1], c=point_colours, s=10, alpha=0.6, linewidths=0)
    ax.set_xlabel("component 1")
    ax.set_ylabel("component 2")
    ax.set_title("2-D projection")
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    ax3.scatter(xyz[:, 0], xyz[:, 1], xyz[:, 2], c=point_colours, s=10, alpha=0.8, linewidths=0, depthshade=False)
    ax3.set_title("3-D projection", loc="left")
    for axis, label in ((ax3.xaxis, "component 1"), (ax3.yaxis, "component 2"), (ax3.zaxis, "component 3")):
        axis.set_ticks([-1, 0, 1])
        axis.set_label_text(label)
    ax3.view_init(elev=22, azim=38)
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=colours[s], label=f"S{s} {_short(names[s], 34)}")
        for s in sorted(colours)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(handles) - 1) // 4)))
    fig.suptitle(
        f"{len(points):,} customers (sample), coloured by segment (k = {k}); customers with similar persona "
        "combinations lie close together (positions jittered slightly)",
        x=0.01, ha="left", fontsize=10, color="#52606d",
    )
    return ctx.figures.embed(fig, "segment_projection", "customers projected on the first principal components")


def _silhouette(ctx: Context) -> str:
    frame = ctx.tables["silhouette"].toPandas().sort_values(["representation", "k"])
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    parts = ctx.tables.get("rfm_parts")
    parts = parts.toPandas() if parts is not None else pd.DataFrame(columns=["part", "computed", "source"])
    computed = [p for p, ok in zip(parts["part"], parts["computed"]) if ok] or ["recency", "frequency", "monetary"]
    styles = {"personas": (LLM_COLOUR, "o", "personas"), "rfm": (RFM_COLOUR, "s", f"RFM ({', '.join(computed)})")}
    for representation, group in frame.groupby("representation"):
        colour, marker, label = styles.get(representation, ("#555555", "^", representation))
        ax.plot(group["k"], group["silhouette"], marker=marker, color=colour, label=label, linewidth=2)
    ax.set_xlabel("number of segments k")
    ax.set_ylabel("silhouette (higher = better separated)")
    ax.set_ylim(min(0.0, float(np.nanmin(frame["silhouette"])) - 0.05) if frame["silhouette"].notna().any() else 0, 1.0)
    ax.set_xticks(sorted(frame["k"].unique()))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False)
    ax.set_title("Silhouette vs k")
    wide = frame.pivot_table(index="k", columns="representation", values="silhouette").reset_index()
    wide.columns = [str(c) for c in wide.columns]
    notes = "".join(
        _note(f"RFM {part}: " + (f"from {source}." if ok else f"not computed, {source}."))
        for part, ok, source in zip(parts["part"], parts["computed"], parts["source"])
    )
    return ctx.figures.embed(fig, "silhouette", "silhouette versus k for personas and RFM") + notes + _table(wide)


def _robustness(ctx: Context) -> str:
    frame = ctx.tables["robustness"].toPandas()
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(frame) + 1.3))
    colours = [LLM_COLOUR if r == "personas" else RFM_COLOUR for r in frame["representation"]]
    labels = [{"personas": "personas", "rfm": "RFM deciles"}.get(r, r) for r in frame["representation"]]
    ax.barh(labels, frame["share_unchanged"], color=colours)
    for y, share in enumerate(frame["share_unchanged"]):
        ax.text(share, y, f"  {100 * share:.1f} %", va="center")
    ax.set_xlim(0, 1.12)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_xlabel("share of customers whose representation did not change")
    ax.set_title("Stable from one period to the next")
    table = frame.rename(columns={"users": "customers compared", "unchanged": "unchanged", "share_unchanged": "share unchanged"})
    return ctx.figures.embed(fig, "robustness", "share of customers with an unchanged representation") + _table(
        table, percent=("share unchanged",)
    )


def _quality(ctx: Context) -> str:
    evaluation = ctx.tables["evaluation"].toPandas()
    shown = [c for c in ("run_id", "method", "reference", "users", "micro_f1", "macro_f1", "precision", "recall",
                         "baseline_micro_f1") if c in evaluation.columns]
    if "run_id" in evaluation.columns:
        evaluation = evaluation.sort_values("run_id", ascending=False)
    renamed = evaluation[shown or list(evaluation.columns)].rename(
        columns={"users": "customers scored", "micro_f1": "micro F1", "macro_f1": "macro F1",
                 "baseline_micro_f1": "baseline micro F1 (most popular personas)"}
    )
    parts = [_table(renamed)]
    per_persona = ctx.tables.get("evaluation_per_persona")
    if per_persona is None:
        parts.append(_note("Per-persona precision/recall not available — run persona-spark evaluate."))
        return "".join(parts)
    latest = per_persona.agg(F.max("run_id").alias("run_id")).first()["run_id"]
    if latest is None:
        return "".join(parts)
    frame = per_persona.filter(F.col("run_id") == latest).toPandas()
    support = "support" if "support" in frame.columns else "actual"  # customers with the persona in the reference
    frame = frame[frame[support] > 0].sort_values(support)
    frame["label"] = [f"{_short(ctx.name(i), 30)} (n={s:,})" for i, s in zip(frame["persona_idx"], frame[support])]
    fig, ax = plt.subplots(figsize=(9, 0.34 * len(frame) + 1.5))
    y = np.arange(len(frame))
    ax.barh(y + 0.2, frame["precision"], height=0.4, color=LLM_COLOUR, label="precision")
    ax.barh(y - 0.2, frame["recall"], height=0.4, color=PROPAGATED_COLOUR, label="recall")
    ax.set_yticks(y, frame["label"])
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.legend(loc="lower right", frameon=False)
    ax.set_title(f"Per persona, run {latest} (n = reference customers with the persona)")
    parts.append(ctx.figures.embed(fig, "quality_per_persona", "precision and recall per persona"))
    return "".join(parts)


def _run_label(run_id: str, ts) -> str:
    return f"{pd.Timestamp(ts).strftime('%Y-%m-%d %H:%M')} ({run_id.split('-')[-1]})"


def movement_sentences(flows: pd.DataFrame, name: Callable[[int], str], limit: int = 5, markup: bool = True) -> list[str]:
    """The largest flows between two runs in words (``from_persona_idx, to_persona_idx, customers``;
    -1 = no persona), kept personas left out; persona names in HTML bold unless ``markup`` is off."""
    def bold(persona_idx) -> str:
        text = name(persona_idx)
        return f"<b>{html.escape(text)}</b>" if markup else text

    moved = flows[flows["from_persona_idx"] != flows["to_persona_idx"]].sort_values(
        ["customers", "from_persona_idx", "to_persona_idx"], ascending=[False, True, True]).head(limit)
    out = []
    for row in moved.itertuples():
        n = f"{row.customers:,} customer{'s' if row.customers != 1 else ''}"
        if row.from_persona_idx < 0:
            out.append(f"{n} gained {bold(row.to_persona_idx)} without losing a persona")
        elif row.to_persona_idx < 0:
            out.append(f"{n} lost {bold(row.from_persona_idx)} without gaining one")
        else:
            out.append(f"{n} dropped {bold(row.from_persona_idx)} and picked up {bold(row.to_persona_idx)}")
    return out


def _drift(ctx: Context) -> str:
    transitions = ctx.tables["persona_transitions"]
    latest = transitions.select("from_run_id", "to_run_id", "from_ts", "to_ts").distinct().orderBy(F.desc("to_ts")).first()
    if latest is None:
        return _note("No two runs to compare yet: drift appears after the second gplr run.")
    per_persona = transitions.filter(F.col("to_run_id") == latest["to_run_id"]).toPandas()
    flows = ctx.tables["persona_flows"].filter(F.col("to_run_id") == latest["to_run_id"]).toPandas()
    first = per_persona.iloc[0]
    span = f"{_run_label(latest['from_run_id'], latest['from_ts'])} → {_run_label(latest['to_run_id'], latest['to_ts'])}"
    headline = (f"<p>Runs {html.escape(span)}: <b>{int(first['customers_changed']):,}</b> of {int(first['customers']):,} "
                f"customers ({100 * first['share_changed']:.1f} %) changed their persona set.</p>")
    moves = flows[flows["from_persona_idx"] != flows["to_persona_idx"]]
    if moves.empty:
        return headline + _note("Nobody gained or lost a persona between these runs.")
    volume = pd.concat([moves.groupby("from_persona_idx")["customers"].sum(), moves.groupby("to_persona_idx")["customers"].sum()])
    volume = volume.groupby(level=0).sum().drop(index=-1, errors="ignore").sort_values(ascending=False)
    shown = list(volume.head(ctx.conf.top_personas).index) + [-1]
    labels = [_short(ctx.name(i), 30) if i >= 0 else "(no persona)" for i in shown]
    matrix = (moves.pivot_table(index="from_persona_idx", columns="to_persona_idx", values="customers", aggfunc="sum")
              .reindex(index=shown, columns=shown).astype(float))
    values = matrix.values
    values[values == 0] = np.nan
    size = 0.42 * len(shown) + 2.5
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    cmap = plt.get_cmap("Oranges").with_extremes(bad="#eef1f4")
    image = ax.imshow(values, cmap=cmap, vmin=0)
    ax.set_xticks(range(len(shown)), labels, rotation=60, ha="right")
    ax.set_yticks(range(len(shown)), labels)
    ax.set_xlabel("persona gained this run")
    ax.set_ylabel("persona lost since the previous run")
    ax.spines[:].set_visible(False)
    top_value = np.nanmax(values)
    if len(shown) <= 25:
        for r in range(len(shown)):
            for c in range(len(shown)):
                if not math.isnan(values[r, c]):
                    ax.text(c, r, f"{values[r, c]:,.0f}", ha="center", va="center", fontsize=7.5,
                            color="white" if values[r, c] > 0.55 * top_value else INK)
    ax.set_title("Customers who lost the row persona and gained the column persona")
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02)
    img = ctx.figures.embed(fig, "persona_drift", "heat map of customers moving between personas")
    bullets = "".join(f"<li>{s}</li>" for s in movement_sentences(flows, ctx.name))
    per_persona["net"] = per_persona["customers_after"] - per_persona["customers_before"]
    per_persona = per_persona.reindex(per_persona["net"].abs().sort_values(ascending=False).index)
    growth = "".join(
        f"<li><b>{html.escape(ctx.name(r.persona_idx))}</b> {'grew' if r.net > 0 else 'shrank'} by {abs(r.net):,} "
        f"customers ({r.customers_before:,} → {r.customers_after:,}: {r.gained:,} gained, {r.lost:,} lost)</li>"
        for r in per_persona.head(3).itertuples() if r.net != 0)
    table = per_persona[["persona", "customers_before", "customers_after", "kept", "gained", "lost", "net"]].rename(
        columns={"customers_before": "customers before", "customers_after": "customers after"})
    return (headline + img + f"<p>Largest movements:</p><ul>{bullets}</ul>"
            + (f"<p>Largest net changes:</p><ul>{growth}</ul>" if growth else "")
            + "<details><summary>Every persona</summary>" + _table(table) + "</details>")


def _calibration(ctx: Context) -> str:
    bins = ctx.tables["persona_calibration"]
    latest = bins.agg(F.max("run_id")).first()[0]
    frame = bins.filter(F.col("run_id") == latest).toPandas().sort_values("bin")
    pairs = frame["pairs"].sum()
    ece = float((frame["pairs"] * (frame["observed"] - frame["mean_predicted"]).abs()).sum() / pairs)
    fig, ax = plt.subplots(figsize=(5.8, 5.2))
    ax.plot([0, 1], [0, 1], color="#9aa5b1", linestyle="--", linewidth=1, label="perfectly calibrated")
    ax.plot(frame["mean_predicted"], frame["observed"], color=LLM_COLOUR, linewidth=1.5)
    ax.scatter(frame["mean_predicted"], frame["observed"], s=20 + 300 * frame["pairs"] / frame["pairs"].max(),
               color=LLM_COLOUR, zorder=3, label="held-out pairs (dot size = count)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_xlabel("predicted probability of the persona")
    ax.set_ylabel("share the LLM actually gave")
    ax.set_title("Reliability on held-out prototypes")
    ax.legend(loc="upper left", frameon=False)
    img = ctx.figures.embed(fig, "calibration", "reliability plot of persona probabilities")
    note = _note(f"Run {latest}: {pairs:,} (customer, persona) pairs of LLM-labelled customers, each scored by a model "
                 f"and a calibration fitted without them. Expected calibration error {100 * ece:.1f} points.")
    table = frame[["lower", "upper", "pairs", "mean_predicted", "observed"]].rename(
        columns={"mean_predicted": "mean predicted", "observed": "observed share"})
    return note + img + "<details><summary>The bins</summary>" + _table(table, percent=("lower", "upper", "mean predicted", "observed share")) + "</details>"


def metric_rows(runs: DataFrame) -> pd.DataFrame:
    """``model, run, metric, k, value``: one row per model run and ranking metric (small: runs × metrics).

    Reads the ``metrics`` map (``ndcg@10`` ...) the train stage writes, else flat columns like
    ``ndcg_at_10`` / ``ndcg@10`` / ``ndcg_10``; validation metrics (``val_*``) are not test results."""
    run_key = [c for c in ("run_id", "seed") if c in runs.columns]
    run = F.concat_ws("/", *[F.col(c).cast("string") for c in run_key]) if run_key else F.monotonically_increasing_id().cast("string")
    if "metrics" in runs.columns:
        long = runs.select("model", run.alias("run"), F.explode("metrics").alias("name", "value"))
    else:
        columns = [c for c in runs.columns if METRIC_COLUMN.match(c)]
        if not columns:
            return pd.DataFrame(columns=["model", "run", "metric", "k", "value"])
        pairs = F.array(*[F.struct(F.lit(c).alias("name"), F.col(c).cast("double").alias("value")) for c in columns])
        long = runs.select("model", run.alias("run"), F.explode(pairs).alias("m")).select("model", "run", "m.name", "m.value")
    frame = long.toPandas()
    parsed = frame["name"].str.extract(METRIC_COLUMN)
    frame["metric"], frame["k"] = parsed[0].str.lower(), pd.to_numeric(parsed[1])
    return frame.dropna(subset=["metric", "k", "value"]).astype({"k": int})


def _recommendations(ctx: Context) -> str:
    runs = ctx.tables["recommend_runs"]
    if "model" not in runs.columns:
        return _note("recommend_runs has no 'model' column; nothing to compare.")
    rows = metric_rows(runs)
    if rows.empty:
        return _note("recommend_runs has no ranking metrics (expected a metrics map or ndcg_at_<k> columns).")
    stats = rows.groupby(["model", "metric", "k"])["value"].agg(["mean", "std", "count"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    metrics = [m for m in ("ndcg", "recall", "f1") if m in set(stats["metric"])] or sorted(set(stats["metric"]))
    models = sorted(set(stats["model"]))
    colours = dict(zip(models, _segment_colours(len(models))))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics) + 1, 3.8), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for model in models:
            line = stats[(stats["metric"] == metric) & (stats["model"] == model)].sort_values("k")
            ax.errorbar(line["k"], line["mean"], yerr=line["std"], marker="o", capsize=3, linewidth=2,
                        color=colours[model], label=model)
        ax.set_xscale("log")
        ks = sorted(set(stats[stats["metric"] == metric]["k"]))
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set_xlabel("top-K recommended products")
        ax.set_title(f"{metric.upper() if metric == 'f1' else metric.capitalize()}@K")
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("mean over training seeds")
    axes[0][-1].legend(frameon=False)
    figure = ctx.figures.embed(fig, "recommendations", "recommendation metrics by model and K")

    headline_k = 10 if 10 in set(stats["k"]) else int(stats["k"].min())
    table = stats[stats["k"] == headline_k].copy()
    table["cell"] = [f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}" for m, s, n in zip(table["mean"], table["std"], table["count"])]
    wide = table.pivot(index="model", columns="metric", values="cell")
    wide.columns = [f"{c}@{headline_k}" for c in wide.columns]
    runs_pd = runs.select(*[c for c in ("model", "seconds", "epochs", "device") if c in runs.columns]).toPandas()
    extra = runs_pd.groupby("model").agg(
        **{"training runs": ("model", "size")},
        **({"mean seconds": ("seconds", "mean")} if "seconds" in runs_pd else {}),
        **({"epochs": ("epochs", "max")} if "epochs" in runs_pd else {}),
        **({"device": ("device", "first")} if "device" in runs_pd else {}),
    )
    summary = wide.join(extra).reset_index()
    return figure + _note(f"Mean ± standard deviation over training seeds at K = {headline_k}.") + _table(summary, decimals=1)


def _labeling(ctx: Context) -> str:
    labels = ctx.tables["user_labels"]
    if "channel" not in labels.columns:  # a cache table written before the ledger had channels
        labels = labels.withColumn("channel", F.lit("sync"))
    labels = labels.withColumn("_cost", cost_column(ctx.prices, labels.columns))
    keys = [c for c in ("model", "prompt_version", "channel", "status") if c in labels.columns]
    token_cols = [c for c in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens") if c in labels.columns]
    tokens = {c: F.coalesce(F.sum(c), F.lit(0)).cast("long").alias(c) for c in token_cols}
    aggregates = [F.count("*").alias("customers"), *tokens.values(), F.sum("_cost").alias("cost USD")]
    if "latency_ms" in labels.columns:
        aggregates += [F.avg("latency_ms").alias("mean latency ms"), F.percentile_approx("latency_ms", 0.95).alias("p95 latency ms")]
    ledger = labels.groupBy(*keys).agg(*aggregates).toPandas().sort_values(keys)
    # A refresh is a day's labeling (GPLR rounds of one run, or one label-users call).
    refreshes = (
        labels.groupBy(F.to_date("ts").alias("refresh"), "channel")
        .agg(F.count("*").alias("customers"), *[F.coalesce(F.sum(c), F.lit(0)).cast("long").alias(c) for c in token_cols],
             F.sum("_cost").alias("cost USD"))
        .orderBy("refresh", "channel").toPandas()
    )
    total_cost = float(ledger["cost USD"].sum())
    total_tokens = int(ledger.get("prompt_tokens", pd.Series([0])).sum() + ledger.get("completion_tokens", pd.Series([0])).sum())
    ctx.facts.update(labeled=int(ledger["customers"].sum()))
    cards = [("labelled by", ctx.labeler()), ("customers sent to the labeler", f"{int(ledger['customers'].sum()):,}")]
    if total_tokens > 0:  # an offline or recorded labeler pays nothing: no cost to show
        ctx.facts.update(labeling_cost=total_cost)
        cards += [("tokens used", f"{total_tokens:,}"), ("estimated cost", f"${total_cost:,.2f}")]
        sync, batch = ctx.prices["sync"], ctx.prices["batch"]
        parts = [
            _cards(cards),
            _note(
                f"Priced like the bill, per 1k tokens: synchronous calls ${sync.prompt:g} prompt, ${sync.cached_prompt:g} "
                f"cached prompt, ${sync.completion:g} completion; Batch API ${batch.prompt:g} / ${batch.cached_prompt:g} / "
                f"${batch.completion:g} (labeling.openai.*price*)."
            ),
            "<h3>Cost per refresh</h3>" + _table(refreshes, decimals=4),
            "<h3>Ledger</h3>" + _table(ledger, decimals=2),
        ]
    else:
        ledger = ledger.drop(columns=["cost USD", "prompt_tokens", "completion_tokens", "cached_prompt_tokens"],
                             errors="ignore")
        note = f"The prototypes were labelled by {ctx.labeler()}, which uses no tokens and costs nothing per label."
        parts = [_cards(cards), _note(note), _table(ledger, decimals=2)]
    if "status" in labels.columns and "error" in labels.columns:
        errors = (
            labels.filter(F.col("error").isNotNull()).groupBy("status", "error").count()
            .orderBy(F.desc("count")).limit(5).toPandas()
        )
        if not errors.empty:
            parts.append("<h3>Most frequent errors</h3>" + _table(errors))
    return "".join(parts)


SECTIONS = (
    Section("personas", "Who our customers are", ("personas",),
            "How many customers carry each persona, and whether the labeler labelled them directly or they "
            "received the persona through their purchases (propagation).", _persona_distribution),
    Section("cooccurrence", "Personas that go together", ("personas",),
            "Read a row: of the customers with that persona, the share who also have each other persona. "
            "Dark cells are combinations worth a joint campaign.", _cooccurrence),
    Section("segments", "Customer segments", ("segments", "segment_summary", "silhouette"),
            "Customers grouped by their persona combination (personas → PCA → KMeans). Each segment is named "
            "after its dominant personas and the products its members buy more than other customers.", _segments),
    Section("silhouette", "Segment quality: personas vs RFM", ("silhouette",),
            "Silhouette measures how well separated segments are (1 = perfectly). Persona-based segments are "
            "compared with the classic RFM segmentation put through the same pipeline.", _silhouette),
    Section("robustness", "Stability over time", ("robustness",),
            "Each customer's purchases are split into an earlier and a later half; a stable representation "
            "keeps customers in the same place, so campaigns built on it keep reaching the right people.", _robustness),
    Section("drift", "Persona drift since the previous run", ("persona_transitions", "persona_flows"),
            "Who changed persona between the last two monthly runs: each cell counts customers who lost the row "
            "persona and gained the column persona (\"no persona\" for a persona lost or gained alone).", _drift),
    Section("calibration", "How sure the personas are", ("persona_calibration",),
            "Every propagated persona carries a probability. On customers the LLM labelled (held out while "
            "fitting), personas given 70 % should be right about 70 % of the time: dots on the diagonal.", _calibration),
    Section("quality", "Persona quality (GPLR vs reference labels)", ("evaluation",),
            "How well propagated personas match reference labels on customers the labeler did not label.", _quality),
    Section("recommendations", "Recommendations", ("recommend_runs",),
            "Offline ranking quality of the recommenders trained on the purchase graph with personas.", _recommendations),
    Section("labeling", "Labeling cost and token ledger", ("user_labels",),
            "Who labelled the prototypes and what it cost: customers, tokens and estimated spend per model and "
            "prompt version.", _labeling),
)


# ---- assembly -----------------------------------------------------------------------------------------
@dataclass
class Report:
    path: str
    figures: list[str]
    sections: dict[str, str]  # key -> "ok" | "missing" | "failed"


def _overview(tables: Mapping[str, DataFrame | None], ctx: Context) -> str:
    cards = []
    for table, label in (("users", "customers"), ("items", "products"), ("edges", "customer–product pairs")):
        if tables.get(table) is not None:
            cards.append((label, f"{tables[table].count():,}"))
    cards.append(("personas in the set", f"{len(ctx.persona_names):,}"))
    if "users_with_personas" in ctx.facts:
        cards.append(("customers with personas", f"{ctx.facts['users_with_personas']:,}"))
        cards.append((f"labelled by {_short(ctx.labeler(), 40)}", f"{ctx.facts['llm_users']:,}"))
    if "segments_k" in ctx.facts:
        cards.append(("segments shown", str(ctx.facts["segments_k"])))
    if "labeling_cost" in ctx.facts:
        cards.append(("labeling cost (est.)", f"${ctx.facts['labeling_cost']:,.2f}"))
    return _cards(cards)


def build_report(
    tables: Mapping[str, DataFrame | None],
    path: str,
    persona_names: dict[int, str],
    conf: ReportConf | None = None,
    prices: Mapping[str, Rates] | None = None,
    title: str = "Customer personas",
) -> Report:
    """Render the report from whichever tables exist (``None`` = not written yet) to ``path`` (any URI)."""
    conf = conf or ReportConf()
    path = storage.absolute(str(path))
    free = Rates(0.0, 0.0, 0.0)
    ctx = Context(tables, persona_names, conf, Figures(storage.join(posixpath.dirname(path), "figures")),
                  prices or {"sync": free, "batch": free})
    bodies, status = [], {}
    for section in SECTIONS:
        missing = [t for t in section.needs if tables.get(t) is None]
        if missing:
            stages = sorted({WRITTEN_BY.get(t, "?") for t in missing})
            body = _note(
                f"Not available — run {' and '.join('persona-spark ' + s for s in stages)} "
                f"(table{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing)."
            )
            status[section.key] = "missing"
        else:
            try:
                body = f'<p class="lead">{html.escape(section.lead)}</p>' + section.build(ctx)
                status[section.key] = "ok"
            except Exception as error:  # one broken section must not cost the reader the whole report
                log.exception("report section %s failed", section.key)
                body = _note(f"This section could not be rendered: {type(error).__name__}: {error}")
                status[section.key] = "failed"
        css = "section missing" if status[section.key] == "missing" else "section"
        bodies.append(f'<section id="{section.key}" class="{css}"><h2>{html.escape(section.title)}</h2>{body}</section>')
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in SECTIONS)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    document = HTML_TEMPLATE.format(
        title=html.escape(title), generated=generated, nav=nav, overview=_overview(tables, ctx), sections="".join(bodies)
    )
    storage.write_text(path, document)
    log.info("report written to %s (%s)", path, status)
    return Report(path, ctx.figures.written, status)


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1f2933;
         background: #f5f7fa; margin: 0; line-height: 1.5; }}
  header {{ background: #0f3b66; color: white; padding: 28px 40px 18px; }}
  header h1 {{ margin: 0 0 4px; font-size: 28px; }}
  header .sub {{ color: #c4dcf2; font-size: 14px; }}
  nav {{ background: #16497c; padding: 8px 40px; position: sticky; top: 0; z-index: 1; }}
  nav a {{ color: #e1efff; text-decoration: none; margin-right: 18px; font-size: 14px; white-space: nowrap; }}
  nav a:hover {{ text-decoration: underline; }}
  main {{ max-width: 1180px; margin: 0 auto; padding: 12px 40px 60px; }}
  .section {{ background: white; border-radius: 10px; padding: 18px 26px 22px; margin: 22px 0;
              box-shadow: 0 1px 3px rgba(15, 59, 102, 0.12); }}
  .section.missing {{ background: #fbfcfd; box-shadow: none; border: 1px dashed #cbd2d9; }}
  h2 {{ margin: 4px 0 6px; font-size: 21px; color: #0f3b66; }}
  h3 {{ font-size: 16px; margin: 22px 0 8px; }}
  .lead {{ color: #3e4c59; margin-top: 0; }}
  .note {{ color: #616e7c; font-size: 14px; }}
  figure {{ margin: 12px 0; }}
  figure img {{ max-width: 100%; height: auto; }}
  .cards {{ display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0 6px; }}
  .card {{ background: white; border-radius: 10px; padding: 12px 18px; min-width: 130px;
           box-shadow: 0 1px 3px rgba(15, 59, 102, 0.12); }}
  .card .value {{ font-size: 22px; font-weight: 700; color: #0f3b66; }}
  .card .label {{ font-size: 13px; color: #616e7c; }}
  table.data {{ border-collapse: collapse; font-size: 13.5px; margin: 10px 0; width: 100%; }}
  table.data th {{ text-align: left; background: #e4ecf5; padding: 6px 10px; }}
  table.data td {{ padding: 5px 10px; border-top: 1px solid #e4e7eb; vertical-align: top; }}
  table.data tr:nth-child(even) td {{ background: #f8fafc; }}
  details summary {{ cursor: pointer; color: #16497c; margin: 8px 0; }}
  footer {{ color: #7b8794; font-size: 12px; text-align: center; padding: 20px; }}
</style></head>
<body>
<header><h1>{title}</h1><div class="sub">Personas from purchases (GPLR) · generated {generated}</div></header>
<nav>{nav}</nav>
<main>
{overview}
{sections}
</main>
<footer>persona-spark · figures are also saved as PNG files in the figures/ folder next to this page</footer>
</body></html>
"""
