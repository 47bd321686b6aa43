"""The gathered frames -> HTML and PNG figures: pure functions, no Spark, no files, no global matplotlib state.

Each figure is a ``matplotlib.figure.Figure`` on its own Agg canvas (pyplot's global figure manager and
backend are never touched), drawn inside ``matplotlib.rc_context(STYLE)`` by ``styled``; its PNG bytes
are kept on the ``Canvas`` and embedded in the page as base64, so the page opens offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from string import Template

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

from persona_spark.config import ReportConf
from persona_spark.labeling.pricing import Rates
from persona_spark.redaction import redact
from persona_spark.report import gather

LLM_COLOUR = "#1f5f99"
PROPAGATED_COLOUR = "#8fbce6"
RFM_COLOUR = "#d08a2c"
INK = "#1f2933"
STYLE = {
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
PAGE_TEMPLATE = "resources/report/page.html"  # inside the persona_spark package (package data in the wheel)


@contextmanager
def styled() -> Iterator[None]:
    """The report's matplotlib look, for the figures drawn inside this block only."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(**kwargs) -> Figure:
    """A figure on its own Agg canvas: PNG output whatever backend the process (a notebook) uses."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


@dataclass
class Canvas:
    """What every renderer shares (names, knobs, the labeler, prices, secrets) and the PNGs drawn so far."""

    persona_names: Mapping[int, str]
    conf: ReportConf
    labeler: str  # describe_labelers
    prices: Mapping[str, Rates]
    secrets: tuple[str, ...] = ()  # values redacted from any text shown (the configured API key)
    figures: dict[str, bytes] = field(default_factory=dict)  # name -> PNG

    def name(self, idx: int) -> str:
        return self.persona_names.get(int(idx), f"persona {idx}")

    def embed(self, fig: Figure, name: str, alt: str) -> str:
        """Keep the figure's PNG under ``name`` and return an <img> embedding the same bytes."""
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight", facecolor="white")
        self.figures[name] = buffer.getvalue()
        encoded = base64.b64encode(self.figures[name]).decode("ascii")
        return f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}"></figure>'


# ---- html pieces ------------------------------------------------------------------------------------
def table(frame: pd.DataFrame, percent: tuple[str, ...] = (), decimals: int = 3) -> str:
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


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def cards(pairs: list[tuple[str, str]]) -> str:
    cells = "".join(
        f'<div class="card"><div class="value">{html.escape(v)}</div><div class="label">{html.escape(k)}</div></div>'
        for k, v in pairs
    )
    return f'<div class="cards">{cells}</div>'


def short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def palette(n: int) -> list:
    """``n`` distinguishable colours (segments, models)."""
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i if n <= 20 else i / max(n - 1, 1)) for i in range(n)]


def failure_box(error: BaseException, secrets: tuple[str, ...]) -> str:
    """What a reader sees of a section that failed (report.allow_partial): the error, keys redacted."""
    message = redact(f"{type(error).__name__}: {error}", secrets)
    return f'<div class="error" role="alert"><b>This section could not be rendered.</b> {html.escape(message)}</div>'


def missing_note(missing: list[str], written_by: Mapping[str, str]) -> str:
    stages = sorted({written_by.get(t, "?") for t in missing})
    return note(
        f"Not available — run {' and '.join('persona-spark ' + s for s in stages)} "
        f"(table{'s' if len(missing) > 1 else ''} {', '.join(missing)} missing)."
    )


# ---- sections -----------------------------------------------------------------------------------------
def persona_distribution(counts: gather.PersonaCounts, canvas: Canvas) -> str:
    wide, customers = counts.per_persona, counts.customers
    shown = wide.head(canvas.conf.personas_shown).iloc[::-1]
    labels = [short(canvas.name(i), 34) for i in shown.index]
    fig = new_figure(figsize=(11, 0.32 * len(shown) + 1.6))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.1]})
    ax.barh(labels, shown["llm"], color=LLM_COLOUR, label=f"labelled by {short(canvas.labeler, 48)}")
    ax.barh(labels, shown["propagated"], left=shown["llm"], color=PROPAGATED_COLOUR, label="propagated (GPLR)")
    for y, total in enumerate(shown["total"]):
        ax.text(total, y, f"  {100 * total / customers:.0f} %", va="center", fontsize=9)
    ax.set_xlabel("customers")
    ax.set_title("Customers per persona")
    ax.legend(loc="lower right", frameon=False)
    ax.margins(x=0.12)
    per_customer = counts.per_customer
    ax2.bar(per_customer["n"].astype(str), per_customer["count"], color=LLM_COLOUR)
    ax2.set_title("Personas per customer")
    ax2.set_xlabel("number of personas")
    ax2.set_ylabel("customers")
    img = canvas.embed(fig, "persona_distribution", "customers per persona, labelled vs propagated")

    listing = pd.DataFrame(
        {
            "persona": [canvas.name(i) for i in wide.index],
            "customers": wide["total"].astype(int).values,
            "share of customers": (wide["total"] / customers).values,
            "labelled directly (prototypes)": wide["llm"].astype(int).values,
            "propagated": wide["propagated"].astype(int).values,
        }
    )
    summary = note(
        f"{customers:,} customers have at least one persona; {counts.labelled:,} of them were labelled by "
        f"{canvas.labeler} (the prototypes), the others received personas by propagation over the purchase graph."
    )
    if counts.reach is not None:
        summary += note(reach_sentence(counts.reach))
    return summary + img + "<details><summary>All personas as a table</summary>" + table(
        listing, percent=("share of customers",)
    ) + "</details>"


def reach_sentence(reach: dict) -> str:
    """One sentence on the customers no prototype reaches (``gplr.reach_counts``) and what they got instead."""
    unreached, total, ell = reach["unreached_users"], reach["unlabelled_users"], reach["ell"]
    trips = f"{ell} round trip{'s' if ell != 1 else ''} (customer → product → customer)"
    if unreached == 0:
        return f"All {total:,} customers not labelled directly are within {trips} of a labelled customer."
    head = (f"{unreached:,} of the {total:,} customers not labelled directly ({100 * unreached / total:.1f} %) "
            f"are not within {trips} of any labelled customer, so no persona propagates to them")
    receive = reach["unreached_receive"]
    if "no_persona" in receive:
        return head + "; the top-k rule gives them none."
    return (head + f"; instead the assignment model gave them personas from the labels of the products they bought "
            f"({receive['item_signal']:,}) or from how common each persona is alone ({receive['prior_only']:,}).")


def cooccurrence(pairs: pd.DataFrame, canvas: Canvas) -> str:
    matrix = pairs.pivot_table(index="row", columns="col", values="count", fill_value=0)
    diagonal = pd.Series(np.diag(matrix.reindex(columns=matrix.index).fillna(0).values), index=matrix.index)
    top = diagonal.sort_values(ascending=False).head(canvas.conf.personas_shown).index
    conditional = matrix.reindex(index=top, columns=top).fillna(0).div(diagonal[top], axis=0)
    values = conditional.values.astype(float)
    np.fill_diagonal(values, np.nan)
    names = [short(canvas.name(i), 30) for i in top]
    size = 0.42 * len(top) + 2.5
    fig = new_figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#eef1f4")
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
        f"<li>{100 * share:.0f} % of <b>{html.escape(canvas.name(r))}</b> customers are also "
        f"<b>{html.escape(canvas.name(c))}</b></li>"
        for (r, c), share in strongest.items()
    )
    return canvas.embed(fig, "persona_cooccurrence", "persona co-occurrence heat map") + (
        f"<p>Strongest overlaps:</p><ul>{bullets}</ul>" if bullets else ""
    )


def segment_name(personas) -> str:
    """The segment's majority personas (held by ≥ half its members), most characteristic (lift) first."""
    personas = list(personas) if personas is not None else []
    majority = sorted((p for p in personas if p["share"] >= 0.5), key=lambda p: -p["lift"])[:2]
    chosen = majority or personas[:1]
    return " + ".join(p["name"] for p in chosen) if chosen else "no persona"


def segments(found: gather.Segmentation, canvas: Canvas) -> str:
    k, rows = found.k, found.segments
    if rows is None:
        return note(f"No segmentation with k={k} in segment_summary (available: {found.available}).")
    rows = rows.assign(name=rows["personas"].map(segment_name))
    colours = dict(zip(sorted(rows["segment"]), palette(len(rows))))

    fig = new_figure(figsize=(11, 0.34 * len(rows) + 1.4))
    ax = fig.subplots()
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
    parts = [canvas.embed(fig, "segment_sizes", f"segment sizes for k={k}")]

    if found.points is not None and not found.points.empty:
        parts.append(projection(found.points, colours, dict(zip(rows["segment"], rows["name"])), k, canvas))
    else:
        parts.append(note("No projection points (segment_points) for this segmentation."))

    listing = pd.DataFrame(
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
    parts.append("<h3>What each segment is</h3>" + table(listing, percent=("share",)))
    return "".join(parts)


def projection(points: pd.DataFrame, colours: dict, names: dict, k: int, canvas: Canvas) -> str:
    # Persona vectors are discrete, so many customers share a point; a little jitter shows the crowd.
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 0.025, size=(len(points), 3))
    xyz = points[["x", "y", "z"]].to_numpy() + jitter
    point_colours = [colours.get(s, "#999999") for s in points["segment"]]
    fig = new_figure(figsize=(12, 5.6))
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
        Line2D([], [], marker="o", linestyle="", color=colours[s], label=f"S{s} {short(names[s], 34)}")
        for s in sorted(colours)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(handles) - 1) // 4)))
    fig.suptitle(
        f"{len(points):,} customers (sample), coloured by segment (k = {k}); customers with similar persona "
        "combinations lie close together (positions jittered slightly)",
        x=0.01, ha="left", fontsize=10, color="#52606d",
    )
    return canvas.embed(fig, "segment_projection", "customers projected on the first principal components")


def silhouette(found: gather.Silhouettes, canvas: Canvas) -> str:
    frame, parts = found.scores, found.rfm_parts
    fig = new_figure(figsize=(7.5, 3.8))
    ax = fig.subplots()
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
        note(f"RFM {part}: " + (f"from {source}." if ok else f"not computed, {source}."))
        for part, ok, source in zip(parts["part"], parts["computed"], parts["source"])
    )
    return canvas.embed(fig, "silhouette", "silhouette versus k for personas and RFM") + notes + table(wide)


def robustness(frame: pd.DataFrame, canvas: Canvas) -> str:
    fig = new_figure(figsize=(6.5, 0.55 * len(frame) + 1.3))
    ax = fig.subplots()
    colours = [LLM_COLOUR if r == "personas" else RFM_COLOUR for r in frame["representation"]]
    labels = [{"personas": "personas", "rfm": "RFM deciles"}.get(r, r) for r in frame["representation"]]
    ax.barh(labels, frame["share_unchanged"], color=colours)
    for y, share in enumerate(frame["share_unchanged"]):
        ax.text(share, y, f"  {100 * share:.1f} %", va="center")
    ax.set_xlim(0, 1.12)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set_xlabel("share of customers whose representation did not change")
    ax.set_title("Stable from one period to the next")
    shown = frame.rename(columns={"users": "customers compared", "unchanged": "unchanged", "share_unchanged": "share unchanged"})
    return canvas.embed(fig, "robustness", "share of customers with an unchanged representation") + table(
        shown, percent=("share unchanged",)
    )


AUDIT_FIGURES = {"micro_f1": "micro F1", "precision": "precision", "recall": "recall", "macro_f1": "macro F1"}


def interval(row) -> str:
    return f"{row['estimate']:.3f} ({row['lower']:.3f}–{row['upper']:.3f})"


def guard_alert(run: gather.AuditRun) -> str:
    """The alert a failed quality guard puts at the top of the page and of the quality section."""
    micro = run.rows[run.rows["metric"] == "micro_f1"]
    found = f"audit micro F1 {interval(micro.iloc[0])}" if len(micro) else "no audit estimate"
    return ('<div class="error" role="alert"><b>Quality alert.</b> '
            f"{html.escape(f'Run {run.run_id}: {found} is below the guard gplr.min_audit_micro_f1; its tables are written.')}"
            "</div>")


def audit(runs: list[gather.AuditRun], canvas: Canvas) -> str:
    """The latest run's audit beside the previous run's: figures with 95 % intervals, then recall per persona."""
    latest = runs[0]
    parts = [guard_alert(latest)] if latest.guard == "failed" else []
    columns = {}
    for run in runs:
        overall = run.rows[run.rows["persona_idx"].isna()].set_index("metric")
        users = int(overall["users"].max()) if len(overall) else 0
        label = f"{'this run' if run is latest else 'previous run'} {run_label(run.run_id, run.run_ts)}, {users:,} customers"
        columns[label] = [interval(overall.loc[m]) if m in overall.index else "" for m in AUDIT_FIGURES]
    parts.append(table(pd.DataFrame({"figure": list(AUDIT_FIGURES.values()), **columns})))
    parts.append(note("Agreement of the run's personas with the labeler on customers drawn at random from those it "
                      "did not label, then labelled for this check only; 95 % intervals (bootstrap over customers)."))
    recall = latest.rows[latest.rows["metric"] == "recall"].dropna(subset=["persona_idx"]).sort_values("support")
    if len(recall):
        shown = pd.DataFrame({"persona": [canvas.name(i) for i in recall["persona_idx"]],
                              "customers with it (audit)": recall["support"].astype(int).to_numpy(),
                              "recall (95 % interval)": [interval(r) for _, r in recall.iterrows()]})
        parts.append("<h3>Recall per persona (audit)</h3>" + table(shown))
    return "".join(parts)


def quality(found: gather.Quality, canvas: Canvas) -> str:
    parts = ["<h3>Agreement with the labeler (audit sample)</h3>" + audit(found.audits, canvas)] if found.audits else []
    evaluation = found.runs
    if evaluation is None:
        parts.append(note("No reference labels scored — run persona-spark evaluate with reference labels to add them."))
        return "".join(parts)
    if found.audits:
        parts.append("<h3>Against reference labels</h3>")
    shown = [c for c in ("run_id", "method", "reference", "users", "micro_f1", "macro_f1", "precision", "recall",
                         "baseline_micro_f1") if c in evaluation.columns]
    renamed = evaluation[shown or list(evaluation.columns)].rename(
        columns={"users": "customers scored", "micro_f1": "micro F1", "macro_f1": "macro F1",
                 "baseline_micro_f1": "baseline micro F1 (most popular personas)"}
    )
    parts.append(table(renamed))
    if found.per_persona is None:
        parts.append(note("Per-persona precision/recall not available — run persona-spark evaluate."))
        return "".join(parts)
    if found.latest_run is None:
        return "".join(parts)
    frame = found.per_persona
    support = "support" if "support" in frame.columns else "actual"  # customers with the persona in the reference
    frame = frame[frame[support] > 0].sort_values(support)
    frame = frame.assign(label=[f"{short(canvas.name(i), 30)} (n={s:,})" for i, s in zip(frame["persona_idx"], frame[support])])
    fig = new_figure(figsize=(9, 0.34 * len(frame) + 1.5))
    ax = fig.subplots()
    y = np.arange(len(frame))
    ax.barh(y + 0.2, frame["precision"], height=0.4, color=LLM_COLOUR, label="precision")
    ax.barh(y - 0.2, frame["recall"], height=0.4, color=PROPAGATED_COLOUR, label="recall")
    ax.set_yticks(y, frame["label"])
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.legend(loc="lower right", frameon=False)
    ax.set_title(f"Per persona, run {found.latest_run} (n = reference customers with the persona)")
    parts.append(canvas.embed(fig, "quality_per_persona", "precision and recall per persona"))
    return "".join(parts)


def run_label(run_id: str, ts) -> str:
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


def drift(found: gather.Drift | None, canvas: Canvas) -> str:
    if found is None:
        return note("No two runs to compare yet: drift appears after the second gplr run.")
    runs, per_persona, flows = found.runs, found.per_persona, found.flows
    first = per_persona.iloc[0]
    span = f"{run_label(runs['from_run_id'], runs['from_ts'])} → {run_label(runs['to_run_id'], runs['to_ts'])}"
    headline = (f"<p>Runs {html.escape(span)}: <b>{int(first['customers_changed']):,}</b> of {int(first['customers']):,} "
                f"customers ({100 * first['share_changed']:.1f} %) changed their persona set.</p>")
    moves = flows[flows["from_persona_idx"] != flows["to_persona_idx"]]
    if moves.empty:
        return headline + note("Nobody gained or lost a persona between these runs.")
    volume = pd.concat([moves.groupby("from_persona_idx")["customers"].sum(), moves.groupby("to_persona_idx")["customers"].sum()])
    volume = volume.groupby(level=0).sum().drop(index=-1, errors="ignore").sort_values(ascending=False)
    shown = list(volume.head(canvas.conf.personas_shown).index) + [-1]
    labels = [short(canvas.name(i), 30) if i >= 0 else "(no persona)" for i in shown]
    matrix = (moves.pivot_table(index="from_persona_idx", columns="to_persona_idx", values="customers", aggfunc="sum")
              .reindex(index=shown, columns=shown).astype(float))
    values = matrix.values
    values[values == 0] = np.nan
    size = 0.42 * len(shown) + 2.5
    fig = new_figure(figsize=(size + 1.5, size))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["Oranges"].with_extremes(bad="#eef1f4")
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
    img = canvas.embed(fig, "persona_drift", "heat map of customers moving between personas")
    bullets = "".join(f"<li>{s}</li>" for s in movement_sentences(flows, canvas.name))
    per_persona = per_persona.assign(net=per_persona["customers_after"] - per_persona["customers_before"])
    per_persona = per_persona.reindex(per_persona["net"].abs().sort_values(ascending=False).index)
    growth = "".join(
        f"<li><b>{html.escape(canvas.name(r.persona_idx))}</b> {'grew' if r.net > 0 else 'shrank'} by {abs(r.net):,} "
        f"customers ({r.customers_before:,} → {r.customers_after:,}: {r.gained:,} gained, {r.lost:,} lost)</li>"
        for r in per_persona.head(3).itertuples() if r.net != 0)
    listing = per_persona[["persona", "customers_before", "customers_after", "kept", "gained", "lost", "net"]].rename(
        columns={"customers_before": "customers before", "customers_after": "customers after"})
    return (headline + img + f"<p>Largest movements:</p><ul>{bullets}</ul>"
            + (f"<p>Largest net changes:</p><ul>{growth}</ul>" if growth else "")
            + "<details><summary>Every persona</summary>" + table(listing) + "</details>")


def calibration(found: gather.Calibration, canvas: Canvas) -> str:
    frame = found.bins
    pairs = frame["pairs"].sum()
    ece = float((frame["pairs"] * (frame["observed"] - frame["mean_predicted"]).abs()).sum() / pairs)
    fig = new_figure(figsize=(5.8, 5.2))
    ax = fig.subplots()
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
    img = canvas.embed(fig, "calibration", "reliability plot of persona probabilities")
    summary = note(f"Run {found.run_id}: {pairs:,} (customer, persona) pairs of LLM-labelled customers, each scored by "
                   f"a model and a calibration fitted without them. Expected calibration error {100 * ece:.1f} points.")
    listing = frame[["lower", "upper", "pairs", "mean_predicted", "observed"]].rename(
        columns={"mean_predicted": "mean predicted", "observed": "observed share"})
    return summary + img + "<details><summary>The bins</summary>" + table(
        listing, percent=("lower", "upper", "mean predicted", "observed share")) + "</details>"


def recommendations(found: gather.Recommendations, canvas: Canvas) -> str:
    rows = found.metrics
    if rows is None:
        return note("recommend_runs has no 'model' column; nothing to compare.")
    if rows.empty:
        return note("recommend_runs has no ranking metrics (expected a metrics map or ndcg_at_<k> columns).")
    stats = rows.groupby(["model", "metric", "k"])["value"].agg(["mean", "std", "count"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    metrics = [m for m in ("ndcg", "recall", "f1") if m in set(stats["metric"])] or sorted(set(stats["metric"]))
    models = sorted(set(stats["model"]))
    colours = dict(zip(models, palette(len(models))))
    fig = new_figure(figsize=(4.2 * len(metrics) + 1, 3.8))
    axes = fig.subplots(1, len(metrics), squeeze=False)
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
    figure = canvas.embed(fig, "recommendations", "recommendation metrics by model and K")

    headline_k = 10 if 10 in set(stats["k"]) else int(stats["k"].min())
    at_k = stats[stats["k"] == headline_k].copy()
    at_k["cell"] = [f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f}" for m, s, n in zip(at_k["mean"], at_k["std"], at_k["count"])]
    wide = at_k.pivot(index="model", columns="metric", values="cell")
    wide.columns = [f"{c}@{headline_k}" for c in wide.columns]
    summary = wide.join(found.training).reset_index()
    return figure + note(f"Mean ± standard deviation over training seeds at K = {headline_k}.") + table(summary, decimals=1)


def labeling(found: gather.Labeling, canvas: Canvas) -> str:
    ledger = found.ledger
    shown = [("labelled by", canvas.labeler), ("customers sent to the labeler", f"{found.customers:,}")]
    if found.tokens > 0:  # an offline or recorded labeler pays nothing: no cost to show
        shown += [("tokens used", f"{found.tokens:,}"), ("estimated cost", f"${found.cost:,.2f}")]
        sync, batch = canvas.prices["sync"], canvas.prices["batch"]
        parts = [
            cards(shown),
            note(
                f"Priced like the bill, per 1k tokens: synchronous calls ${sync.prompt:g} prompt, ${sync.cached_prompt:g} "
                f"cached prompt, ${sync.completion:g} completion; Batch API ${batch.prompt:g} / ${batch.cached_prompt:g} / "
                f"${batch.completion:g} (labeling.openai.*price*)."
            ),
            "<h3>Cost per refresh</h3>" + table(found.refreshes, decimals=4),
            "<h3>Ledger</h3>" + table(ledger, decimals=2),
        ]
    else:
        ledger = ledger.drop(columns=["cost USD", "prompt_tokens", "completion_tokens", "cached_prompt_tokens"],
                             errors="ignore")
        free = f"The prototypes were labelled by {canvas.labeler}, which uses no tokens and costs nothing per label."
        parts = [cards(shown), note(free), table(ledger, decimals=2)]
    if found.audit:
        spent = found.audit
        share = f", {spent['tokens']:,} of its {spent['run_tokens']:,} tokens ({100 * spent['tokens'] / spent['run_tokens']:.1f} %)" \
            if spent["run_tokens"] else ""
        parts.append(note(f"The latest gplr run ({spent['run_id']}) labelled {spent['users']:,} customers for its quality "
                          f"audit{share}; a later run reuses them as prototypes at no new cost."))
    if found.errors is not None and not found.errors.empty:
        errors = found.errors.assign(error=found.errors["error"].map(lambda e: redact(str(e), canvas.secrets)))
        parts.append("<h3>Most frequent errors</h3>" + table(errors))
    return "".join(parts)


# ---- the page -----------------------------------------------------------------------------------------
def overview(sizes: Mapping[str, int], gathered: Mapping[str, object], canvas: Canvas) -> str:
    """Headline cards: the graph's size, then what the sections that rendered found."""
    shown = [(label, f"{sizes[name]:,}") for name, label in
             (("users", "customers"), ("items", "products"), ("edges", "customer–product pairs")) if name in sizes]
    shown.append(("personas in the set", f"{len(canvas.persona_names):,}"))
    counts = gathered.get("personas")
    if isinstance(counts, gather.PersonaCounts):
        shown.append(("customers with personas", f"{counts.customers:,}"))
        shown.append((f"labelled by {short(canvas.labeler, 40)}", f"{counts.labelled:,}"))
    found = gathered.get("segments")
    if isinstance(found, gather.Segmentation) and found.segments is not None:
        shown.append(("segments shown", str(found.k)))
    spent = gathered.get("labeling")
    if isinstance(spent, gather.Labeling) and spent.tokens > 0:
        shown.append(("labeling cost (est.)", f"${spent.cost:,.2f}"))
    quality_found = gathered.get("quality")
    audits = quality_found.audits if isinstance(quality_found, gather.Quality) else []
    micro = audits[0].rows[audits[0].rows["metric"] == "micro_f1"] if audits else []
    if len(micro):
        shown.append(("agreement with the labeler (audit micro F1, 95 % interval)", interval(micro.iloc[0])))
    return (guard_alert(audits[0]) if audits and audits[0].guard == "failed" else "") + cards(shown)


def section(key: str, title: str, state: str, body: str) -> str:
    """``state``: ok, missing or failed (styled apart)."""
    css = "section" if state == "ok" else f"section {state}"
    return f'<section id="{key}" class="{css}"><h2>{html.escape(title)}</h2>{body}</section>'


def page(title: str, generated: str, nav: list[tuple[str, str]], overview_html: str, sections_html: str) -> str:
    """The whole document from the packaged template; ``nav``: (section key, link text)."""
    links = "\n".join(f'<a href="#{key}">{html.escape(text)}</a>' for key, text in nav)
    template = Template(files("persona_spark").joinpath(PAGE_TEMPLATE).read_text(encoding="utf-8"))
    return template.substitute(title=html.escape(title), generated=html.escape(generated), nav=links,
                               overview=overview_html, sections=sections_html)
