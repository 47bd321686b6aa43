"""GPLR (paper Algorithm 1): label a budget of users with the LLM, propagate to everyone else.

The loop: round 1 labels τ/T random users; rounds 2..T label the τ/T users with the highest
Diversity-Uncertainty score under the current affinity Ψ. Labelling is a callable (any backend,
cached by the labeling layer), so this module never touches tables.

Budget accounting (explicit, reported per round): the budget counts users *answered* by the LLM.
An 'unrepresentable' answer was paid for, so it counts, but the user is no prototype (no
persona to propagate). An 'error' (no usable answer) does not count; its budget moves to the
next round (after round T, up to ``MAX_TOP_UP_ROUNDS`` top-up rounds), and the user is not asked
again in this run (the labeling cache retries errors in a later run). Prototypes still valid from an earlier run (same serialized history, so the cache
answers for free) are reused first and count towards the budget.

Assignment, beyond the paper's fixed top-k of Ψ (``assignment='learned'``): a logistic model
over (user, persona) pairs, trained on the prototypes only with K-fold cross-fitting — each
fold's features come from the affinity computed *without* that fold's prototypes, exactly as
for an unlabelled user. Features: Ψ at ℓ̂=1 and ℓ̂=2 (normalized, square-rooted, top-3/top-6
flags), the same for the LLM's item labels pushed to users through their purchases, the user's
train degree (log(1 + products bought), alone and times each of those), the persona prior Q̂
and a per-persona intercept. Each user then gets every persona whose probability
clears a threshold chosen on out-of-fold predictions for micro-F1 (at least 1, at most
``max_personas_per_user``). The model thereby picks how much each hop depth and the item signal count
and how many personas a user gets; the per-persona intercepts play the de-bias role of β.
The model is fitted on at most ``max_train_users`` prototypes (``training_sample``: a seeded sample drawn
in Spark with a floor per persona, weighted to stand for all of them), so what reaches the driver stays
flat as the users, and with them the prototypes, grow.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import partial

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_spark import audit as audits
from persona_spark import labeling, refresh
from persona_spark.affinity import (
    AffinityGraph,
    compute_affinity_depths_of_sets,
    prepare_graph,
    propagate_to_users,
    prototype_labels,
)
from persona_spark.assignment import AssignmentModel, Fold, fit_assignment
from persona_spark.config import AffinityConf, GPLRConf, LabelingConf
from persona_spark.graph import PurchaseGraph
from persona_spark.personas import PersonaSet
from persona_spark.refresh import RunHistory, RunPersonas
from persona_spark.runtime.checkpoint import checkpoint
from persona_spark.runtime.runs import changed_rows, new_run
from persona_spark.sampling import du_scores, persona_distribution, pick_random, pick_top, round_sizes, seeded_order

log = logging.getLogger("persona_spark.gplr")

LabelFn = Callable[[DataFrame], DataFrame]
# prototypes -> item_idx, vec: the item signal, labelled once the prototypes are known
ItemSignalFn = Callable[[DataFrame], DataFrame]
# (label requests, "user" | "item") -> label rows, through the caller's label caches
LabelRequestsFn = Callable[[DataFrame, str], DataFrame]
PERSONAS_SCHEMA = "user_idx int, persona_idx int, score double, rank int, source string, probability double"
# Rounds added after the planned T when errors left budget unspent (bounded: an endpoint that
# keeps failing must not loop forever).
MAX_TOP_UP_ROUNDS = 3
# The round trips ℓ̂ of the learned assignment's two Ψ signals, ``psi`` and ``psi2``.
LEARNED_DEPTHS = (1, 2)


# ---- Spark side -----------------------------------------------------------------------------

def _matrix(column: pd.Series, n_personas: int) -> np.ndarray:
    out = np.zeros((len(column), n_personas))
    for i, vec in enumerate(column):
        if vec is not None:
            out[i] = vec
    return out


def _assign_partition(model: AssignmentModel, signal_cols: list[str], n_personas: int,
                      batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    for batch in batches:
        if batch.empty:
            continue
        signals = [_matrix(batch[c], n_personas) for c in signal_cols]
        scores = model.scores(signals, batch["degree"].to_numpy() if "degree" in batch else None)
        chosen = model.select(scores)
        probabilities = model.probability(scores)
        rank = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1)
        rows, personas = np.nonzero(chosen)
        yield pd.DataFrame({
            "user_idx": batch["user_idx"].to_numpy()[rows].astype("int32"),
            "persona_idx": personas.astype("int32"),
            "score": scores[rows, personas].astype(float),
            "rank": (rank[rows, personas] + 1).astype("int32"),
            "source": "propagated",
            "probability": probabilities[rows, personas],
        })


def assign(signals: DataFrame, model: AssignmentModel, n_personas: int) -> DataFrame:
    """``user_idx``, ``degree`` + signal array columns (``psi``, ``psi2``, ``items``) -> propagated persona rows."""
    cols = ["psi"] if model.mode == "topk" else ["psi", "psi2"] + (["items"] if model.uses_item_signal else [])

    def run(batches):
        return _assign_partition(model, cols, n_personas, batches)

    extra = [] if model.mode == "topk" else ["degree"]
    rows = signals.select("user_idx", *extra, *cols).mapInPandas(run, PERSONAS_SCHEMA)
    return rows.withColumn("probability", F.nanvl("probability", F.lit(None).cast("double")))  # top-k: null, not NaN


def training_sample(prototypes: DataFrame, cap: int, floor: int, seed: int) -> tuple[DataFrame, dict]:
    """Prototype rows (``user_idx, persona_idx``) -> ``user_idx, weight`` of at most ``cap`` prototypes to fit
    the assignment model on, and what was drawn (``fitted_on``). Drawn in Spark; only counts reach the driver.

    Stratified so rare personas stay represented: each persona keeps its ``floor`` carriers with the lowest
    seeded key (all of them if it has fewer); the rest of the cap is the lowest keys among the other
    prototypes, a uniform draw. One key per user orders both, so the floors overlap. The floor takes at
    most half the cap, its users ordered by their rank among each persona's carriers, so a tight cap keeps
    the same number of carriers of every persona. Weights make the sample stand in for all prototypes: a
    floor user counts once, a drawn one (others)/(drawn) times, so any weighted sum over the sample
    (likelihood, micro-F1 counts) is, given the floor, an unbiased estimate of the same sum over every
    prototype. The half bounds how unequal the weights get: a floor filling the cap would leave a few drawn
    users standing for all the others (the fit's effective sample shrinks to about the drawn count).
    Under the cap: everyone, weight 1.
    """
    key = seeded_order(seed)
    rows = prototypes.select("user_idx", "persona_idx").withColumn("key", key)
    carriers = Window.partitionBy("persona_idx").orderBy("key", "user_idx")
    users = (rows.withColumn("carrier_rank", F.row_number().over(carriers))
             .groupBy("user_idx", "key").agg(F.min("carrier_rank").alias("carrier_rank")))
    counts = users.agg(F.count(F.lit(1)).alias("n"),
                       F.sum((F.col("carrier_rank") <= floor).cast("int")).alias("f")).first()
    available = int(counts["n"])
    fitted_on = {"prototypes_available": available, "prototypes_used": min(cap, available),
                 "capped": available > cap, "cap": cap, "floor_per_persona": floor}
    if available <= cap:  # no top-k: Spark buffers one by the limit asked for
        return users.select("user_idx", F.lit(1.0).alias("weight")), {**fitted_on, "floor_prototypes": 0,
                                                                       "drawn_weight": 1.0}
    kept = min(int(counts["f"] or 0), cap // 2)
    in_floor = (users.filter(F.col("carrier_rank") <= floor).orderBy("carrier_rank", "key", "user_idx")
                .limit(kept).select("user_idx", F.lit(1.0).alias("weight")))
    drawn_weight = (available - kept) / (cap - kept)
    drawn = (users.join(in_floor, "user_idx", "left_anti").orderBy("key", "user_idx").limit(cap - kept)
             .select("user_idx", F.lit(drawn_weight).alias("weight")))
    return in_floor.unionByName(drawn), {**fitted_on, "floor_prototypes": kept, "drawn_weight": round(drawn_weight, 6)}


def llm_persona_rows(prototypes: DataFrame) -> DataFrame:
    """The prototypes' own LLM labels as persona rows (score and probability 1, rank in answer order)."""
    in_answer_order = Window.partitionBy("user_idx").orderBy("answer_position")
    return prototypes.select(
        "user_idx", "persona_idx", F.lit(1.0).alias("score"),
        F.row_number().over(in_answer_order).cast("int").alias("rank"), F.lit("llm").alias("source"),
        F.lit(1.0).alias("probability"),
    )


def ok_prototypes(label_rows: DataFrame) -> DataFrame:
    """Label rows -> ``user_idx, persona_idx, answer_position`` for answers with at least one valid persona
    (``answer_position``: where the answer first names the persona, 0 = first)."""
    answered = label_rows.filter((F.col("status") == "ok") & (F.size("persona_idx") > 0))
    named = answered.select("user_idx", F.posexplode("persona_idx").alias("answer_position", "persona_idx"))
    return named.groupBy("user_idx", "persona_idx").agg(F.min("answer_position").alias("answer_position"))


def item_vectors_from_labels(item_rows: DataFrame, n_personas: int) -> DataFrame:
    """Item label rows -> ``item_idx, vec``: the item's personas, each weighted 1/(number of them)."""
    chosen = item_rows.filter((F.col("status") == "ok") & (F.size("persona_idx") > 0))
    share = F.lit(1.0) / F.size("persona_idx")
    vec = F.transform(F.sequence(F.lit(0), F.lit(n_personas - 1)),
                      lambda r: F.when(F.array_contains("persona_idx", r), share).otherwise(F.lit(0.0)))
    return chosen.select(F.col("item_idx").cast("int"), vec.alias("vec"))


def items_to_label(train_edges: DataFrame, prototypes: DataFrame | None, conf: GPLRConf) -> DataFrame | None:
    """``item_idx`` of the items the item signal labels (``conf.item_labels``); None: every item (also for
    ``prototypes`` before any are known: an estimate's upper bound)."""
    if conf.item_labels == "prototypes" and prototypes is not None:
        bought = train_edges.join(prototypes.select("user_idx").distinct(), "user_idx", "left_semi")
        return bought.select("item_idx").distinct()
    if conf.item_labels != "edge_share":
        return None
    buyers = train_edges.groupBy("item_idx").agg(F.count(F.lit(1)).alias("n"))
    # a row per product of the catalogue, ranked in one window: most bought first
    before = F.sum("n").over(Window.orderBy(F.desc("n"), "item_idx").rowsBetween(Window.unboundedPreceding, -1))
    total = F.sum("n").over(Window.partitionBy())
    return (buyers.withColumn("before", F.coalesce(before, F.lit(0))).withColumn("total", total)
            .filter(F.col("before") < F.col("total") * conf.item_edge_share).select("item_idx"))


@dataclass(frozen=True)
class GPLRSettings:
    """The settings one GPLR run reads: its own, the affinity's, the labeling's, and how it pins intermediates
    (``local``, or ``reliable``: survives a lost executor, the caller has set the checkpoint directory)."""

    gplr: GPLRConf = field(default_factory=GPLRConf)
    affinity: AffinityConf = field(default_factory=AffinityConf)
    labeling: LabelingConf = field(default_factory=LabelingConf)
    checkpoint: str = "local"


@dataclass
class LoopResult:
    """What :class:`GPLRLoop` found: the prototypes, who was asked, everyone's personas, the model, the rounds."""

    prototypes: DataFrame  # user_idx, persona_idx, answer_position
    asked: DataFrame  # user_idx, status
    personas: DataFrame  # PERSONAS_SCHEMA, prototypes and propagated
    model: AssignmentModel
    rounds: list[dict]
    budget: int
    seconds: dict
    reach: dict  # reach_counts: users no prototype reaches, and what they got instead
    audit: audits.Audit | None = None  # the audit sample's estimates (None: gplr.audit_users = 0)
    audit_asked: DataFrame | None = None  # user_idx, status of the audit sample

    def record(self) -> dict:
        return {"budget": self.budget, "rounds": self.rounds, "model": asdict(self.model), "seconds": self.seconds,
                "reach": self.reach, "audit": self.audit.summary() if self.audit else None}


def reach_counts(unlabelled: DataFrame, model: AssignmentModel, ell: int) -> dict:
    """How many of the unlabelled users no prototype reaches within the deepest ℓ̂ of the assignment's
    Ψ signals (all of them null), and what they receive instead (one aggregation over ``assign``'s input).

    Such a user's purchases lead to no prototype within that many user → item → user round trips (its
    connected component holds none, or it is farther away; with ε > 0 also: all its Ψ pruned). The top-k rule gives them no persona;
    the learned model still gives each at least one, from the item labels of its purchases when the
    item signal reaches it, else from its prior alone (per-persona intercepts, Q̂, degree).
    """
    psi_cols = ["psi"] if model.mode == "topk" else ["psi", "psi2"]
    unreached = F.coalesce(*psi_cols).isNull()
    with_items = unreached & F.col("items").isNotNull() if model.uses_item_signal else F.lit(False)
    counts = unlabelled.agg(F.count(F.lit(1)).alias("unlabelled"),
                            F.count(F.when(unreached, 1)).alias("unreached"),
                            F.count(F.when(with_items, 1)).alias("item_signal")).first()
    depth = ell if model.mode == "topk" else max(LEARNED_DEPTHS)
    if model.mode == "topk":
        receive = {"no_persona": counts["unreached"]}
    else:
        receive = {"item_signal": counts["item_signal"], "prior_only": counts["unreached"] - counts["item_signal"]}
    return {"ell": depth, "unlabelled_users": counts["unlabelled"], "unreached_users": counts["unreached"],
            "unreached_receive": receive}


def run_record(result: LoopResult, run: tuple[str, datetime], settings: GPLRSettings, persona_set_version: str,
               seconds: float) -> dict:
    """The ``gplr_runs`` row of a run: its settings, the tokens its new answers cost (the audit's included;
    reused prototypes were paid for by an earlier run) and the whole record as JSON in ``details``."""
    run_id, run_ts = run
    conf, affinity_conf = settings.gplr, settings.affinity
    paid = [r for r in result.rounds if r["sampling"] != "reused"] + ([result.audit.cost] if result.audit else [])
    tokens = {f"{kind}_tokens": sum(r[f"{kind}_tokens"] for r in paid) for kind in ("prompt", "completion")}
    return {
        "run_id": run_id, "run_ts": run_ts, "budget": result.budget, "rounds": conf.rounds,
        "sampling": conf.sampling, "assignment": conf.assignment, "seed": conf.seed,
        "eps": affinity_conf.eps, "ell": affinity_conf.ell, "beta": affinity_conf.beta,
        "persona_set_version": persona_set_version, "labeling_backend": settings.labeling.backend, **tokens,
        "details": json.dumps(result.record()), "seconds": round(seconds, 2),
    }


def estimate_run(graph: PurchaseGraph, transactions: DataFrame | None, settings: GPLRSettings,
                 estimate: Callable[[DataFrame, str], dict]) -> dict:
    """What a run would pay, nothing called: ``estimate(requests, "user" | "item")`` prices the items
    (once, with ``item_signal``) and ``budget`` users plus the audit's. Which users DU sampling and the audit
    pick is unknown before round 1, so a random sample of that size stands in for them."""
    conf, users, items = settings.gplr, graph.users, graph.items
    budget = conf.budget_size(users.count())
    audit = conf.audit_size(budget)
    sample = pick_random(users.select("user_idx"), budget + audit, conf.seed)
    requests = labeling.user_requests(graph.train_edges, items, settings.labeling, transactions, users)
    result = {"dry_run": True, "budget": budget, "audit_users": audit,
              "users": estimate(requests.join(sample, "user_idx", "left_semi"), "user")}
    if conf.item_signal:
        wanted = items_to_label(graph.train_edges, None, conf)
        item_requests = labeling.build_item_requests(items)
        result["items"] = estimate(item_requests if wanted is None else item_requests.join(wanted, "item_idx", "left_semi"),
                                   "item")
    for key in ("cost_expected_usd", "cost_max_usd", "prompt_tokens"):
        result[key] = round(sum(part.get(key, 0) for part in (result["users"], result.get("items", {}))), 4)
    return result


@dataclass
class GPLRRun:
    """What a gplr run writes: ``personas`` changes, who was asked, its ``gplr_runs`` row, and what the
    refresh record needs (the run's name, its pinned persona rows with percentile, the model's reliability bins)."""

    outcome: RunPersonas
    changed_personas: DataFrame  # MERGE source for personas on (user_idx, persona_idx): changes and tombstones
    prototypes: DataFrame  # gplr_prototypes: user_idx, status, history_hash, role (prototype | audit)
    record: DataFrame  # the gplr_runs row
    summary: dict
    audit: list[tuple] = field(default_factory=list)  # persona_audit rows (audit.AUDIT_SCHEMA)
    alert: str | None = None  # the quality guard's one line when it failed


def run_gplr(graph: PurchaseGraph, persona_set: PersonaSet, label: LabelRequestsFn, settings: GPLRSettings,
             earlier: RunHistory | None = None, transactions: DataFrame | None = None,
             tiles: AffinityGraph | None = None) -> GPLRRun:
    """One gplr run over ``graph`` from what ``earlier`` runs left (their prototypes and personas).

    ``label(requests, "user" | "item")`` answers label requests through the caller's caches. Prototypes
    ``earlier`` answered for the same history are reused first (None: the first run). ``transactions``: the order lines, when the
    labeler weighs behaviour (the embedding labeler). ``tiles``: the train edges already cut into tiles
    (build-graph's ``edge_tiles``; the caller releases them), else they are cut here. Intermediates are
    pinned with ``settings.checkpoint``."""
    started = time.perf_counter()
    earlier = earlier or RunHistory()
    conf, pin = settings.gplr, partial(checkpoint, mode=settings.checkpoint)
    users, items = graph.users, graph.items
    train = pin(graph.train_edges)
    requests = pin(labeling.user_requests(train, items, settings.labeling, transactions, users))
    phases = {"requests": round(time.perf_counter() - started, 3)}

    def label_users(selected: DataFrame) -> DataFrame:
        return label(requests.join(selected.select("user_idx"), "user_idx", "left_semi"), "user")

    item_counts: dict[str, int] = {}

    def item_signal(prototypes: DataFrame) -> DataFrame:
        """The item vectors of the items ``conf.item_labels`` picks once the prototypes are known."""
        items_started = time.perf_counter()
        requests, wanted = labeling.build_item_requests(items), items_to_label(train, prototypes, conf)
        requests = pin(requests if wanted is None else requests.join(wanted, "item_idx", "left_semi"))
        vectors = pin(item_vectors_from_labels(label(requests, "item"), len(persona_set)))
        item_counts.update(items=items.count(), items_labelled=requests.count())
        phases["item_labeling"] = round(time.perf_counter() - items_started, 3)
        return vectors
    reusable = None
    if earlier.prototypes is not None:
        reusable = (earlier.prototypes.filter(F.col("status") == "ok")
                    .join(requests, ["user_idx", "history_hash"], "left_semi").select("user_idx"))
    draws = earlier.runs.count() if earlier.runs is not None else 0
    result = GPLRLoop(users, train, label_users, len(persona_set), settings, item_signal if conf.item_signal else None,
                      reusable, tiles).run(draws)

    run = new_run()
    diff_started = time.perf_counter()
    personas = pin(refresh.with_percentile(result.personas))
    # pinned before the merge rewrites its source
    changed = pin(changed_rows(earlier.personas, personas, ["user_idx", "persona_idx"]))
    phases["diff"] = round(time.perf_counter() - diff_started, 3)
    result.seconds.update(phases)
    asked = asked_with_roles(result).join(requests.select("user_idx", "history_hash"), "user_idx", "left")
    record = run_record(result, run, settings, persona_set.version, time.perf_counter() - started)
    counts = {r["source"]: r["count"] for r in personas.groupBy("source").count().collect()}
    guard = audits.guard_state(result.audit, conf.min_audit_micro_f1)
    summary = {**{k: v for k, v in record.items() if k not in ("details", "run_ts")}, "run_ts": run[1].isoformat(),
               "per_round": result.rounds, "reach": result.reach, "persona_rows": counts, **item_counts,
               "rows_rewritten": changed.count(), "assignment_cv_micro_f1": result.model.cv_micro_f1,
               "assignment_fitted_on": result.model.fitted_on, "phases": dict(result.seconds),
               "audit": {**result.audit.summary(), "guard": guard} if result.audit else None}
    alert = audits.guard_message(result.audit, conf.min_audit_micro_f1, run[0]) if guard == "failed" else None
    row = users.sparkSession.createDataFrame([record]).select("*", *audits.run_columns(result.audit, guard))
    return GPLRRun(RunPersonas(run, personas, result.model.reliability), changed, asked, row, summary,
                   result.audit.rows(run) if result.audit else [], alert)


def asked_with_roles(result: LoopResult) -> DataFrame:
    """Everyone the run asked, ``user_idx, status, role``: ``prototype`` (the sampling rounds) or ``audit``. A
    later run reuses both as prototypes when their history is unchanged (the cache answers them for free)."""
    asked = result.asked.select("user_idx", "status", F.lit("prototype").alias("role"))
    if result.audit_asked is None:
        return asked
    return asked.unionByName(result.audit_asked.select("user_idx", "status", F.lit("audit").alias("role")))


class GPLRLoop:
    """GPLR's rounds over fixed inputs: sample, label, propagate, assign; ``run()`` returns the result,
    nothing is written."""

    def __init__(self, users: DataFrame, train_edges: DataFrame, label_users: LabelFn, n_personas: int,
                 settings: GPLRSettings, item_vectors: DataFrame | ItemSignalFn | None = None,
                 reusable_prototypes: DataFrame | None = None, graph: AffinityGraph | None = None):
        self.users = users.select("user_idx")
        self.edges = train_edges
        self.label_users = label_users
        self.n_personas = n_personas
        self.conf = settings.gplr
        self.affinity_conf = settings.affinity
        self.checkpoint_mode = settings.checkpoint
        self.item_vectors = item_vectors
        self.reusable = reusable_prototypes
        self.seconds: dict[str, float] = {}
        self._graph: AffinityGraph | None = graph
        self._owns_graph = graph is None  # a graph handed in is the caller's to release
        self._degrees: DataFrame | None = None

    @property
    def degrees(self) -> DataFrame:
        """``user_idx, degree``: the distinct products each user bought in the train graph (a model feature)."""
        if self._degrees is None:
            self._degrees = self._pin(self.edges.groupBy("user_idx").agg(F.countDistinct("item_idx").alias("degree")))
        return self._degrees

    @property
    def graph(self) -> AffinityGraph:
        """The train edges cut into tiles once: every round, fold and hop depth propagates over them."""
        if self._graph is None:
            started = time.perf_counter()
            self._graph = prepare_graph(self.edges, self.affinity_conf, self.n_personas)
            self._timed("graph", started)
        return self._graph

    def release(self) -> None:
        """Drop the tiles this run cut (call when done with it)."""
        if self._graph is not None and self._owns_graph:
            self._graph.release()
            self._graph = None

    def _pin(self, df: DataFrame) -> DataFrame:
        """Materialize an intermediate result: a local checkpoint, or a reliable one (survives a lost
        executor)."""
        return checkpoint(df, self.checkpoint_mode)

    def _timed(self, key: str, started: float) -> None:
        self.seconds[key] = round(self.seconds.get(key, 0.0) + time.perf_counter() - started, 3)

    def budget(self) -> int:
        return self.conf.budget_size(self.users.count())

    def affinity(self, prototypes: DataFrame, beta: float | None = None) -> DataFrame:
        """Ψ at the configured ℓ̂ (sampling, the top-k rule)."""
        return self.affinity_depths(prototypes, (self.affinity_conf.ell,), beta)[self.affinity_conf.ell]

    def affinity_depths(self, prototypes: DataFrame, depths: tuple[int, ...],
                        beta: float | None = None) -> dict[int, DataFrame]:
        """Ψ at each ℓ̂ of ``depths`` from one walk (the learned assignment's Ψ(ℓ̂=1) and Ψ(ℓ̂=2))."""
        return self.affinity_depths_of_sets([prototypes], depths, beta)[0]

    def affinity_depths_of_sets(self, prototype_sets: list[DataFrame], depths: tuple[int, ...],
                                beta: float | None = None) -> list[dict[int, DataFrame]]:
        """``affinity_depths`` of several prototype sets, side by side in as few walks as the tiles hold
        (cross-fitting: every fold's prototypes, then all of them)."""
        graph = self.graph  # its first use is timed as "graph", not here
        started = time.perf_counter()
        beta = self.affinity_conf.beta if beta is None else beta
        labels = [prototype_labels(prototypes, self.n_personas, beta) for prototypes in prototype_sets]
        scores = compute_affinity_depths_of_sets(graph, labels, self.n_personas, depths, self.affinity_conf,
                                                 checkpoint_mode=self.checkpoint_mode)
        self._timed("affinity", started)
        return scores

    def label(self, selected: DataFrame) -> DataFrame:
        started = time.perf_counter()
        rows = self._pin(self.label_users(selected).select(
            "user_idx", "persona_idx", "status", "prompt_tokens", "completion_tokens"))
        self._timed("labeling", started)
        return rows

    def run(self, audit_draw: int = 0) -> LoopResult:
        """Sample, assign, audit. ``audit_draw``: how many runs drew an audit on these tables before (each
        draws with its own seed: a run reuses the last audit's answered users as prototypes, and the same
        seed would keep its unanswered ones in the next audit, no longer a uniform draw)."""
        try:
            answered, rounds = self.sample()
            result = self.assign_all(answered, rounds)
            if self.conf.audit_users > 0:
                result.audit, result.audit_asked = self.audit(answered, result.personas, audit_draw)
                result.seconds = dict(self.seconds)
            return result
        finally:
            self.release()

    def audit(self, answered: DataFrame, personas: DataFrame, draw: int = 0) -> tuple[audits.Audit, DataFrame]:
        """Label ``gplr.audit_users`` users, at most the run's budget, drawn from those nobody asked (the ones
        ``personas`` predicts for) and score ``personas`` on them; their answers reach nothing else. The audit
        and who it asked."""
        started = time.perf_counter()
        candidates = self.users.join(answered.select("user_idx"), "user_idx", "left_anti")
        chosen = self._pin(audits.draw(candidates, self.conf.audit_size(self.budget()), self.conf.seed, draw))
        rows = self._pin(self.label_users(chosen).select(
            "user_idx", "persona_idx", "status", "prompt_tokens", "completion_tokens"))
        sets = audits.audited_sets(personas.select("user_idx", "persona_idx"), rows).toPandas()
        result = audits.score(sets, self.n_personas, self._round_record("audit", rows), self.conf.seed)
        self._timed("audit", started)
        log.info("GPLR audit: %s", {k: v for k, v in result.summary().items() if k != "recall_per_persona"})
        return result, rows.select("user_idx", "status")

    def sample(self) -> tuple[DataFrame, list[dict]]:
        """The labelling rounds: ``(user_idx, persona_idx, status, *_tokens)`` of every user asked, per-round records."""
        conf = self.conf
        budget = self.budget()
        answered = self.label(self.reusable) if self.reusable is not None else None
        rounds = []
        if answered is not None:
            rounds.append(self._round_record("reused", answered))
        spent = answered.filter(F.col("status") != "error").count() if answered is not None else 0
        sizes = round_sizes(max(budget - spent, 0), conf.rounds)
        psi = None
        carry = 0
        r = -1
        while r + 1 < len(sizes) + MAX_TOP_UP_ROUNDS:
            r += 1
            want = (sizes[r] if r < len(sizes) else 0) + carry
            if want <= 0:
                if r >= len(sizes):
                    break
                continue
            candidates = self.users if answered is None else self.users.join(answered.select("user_idx"), "user_idx", "left_anti")
            started = time.perf_counter()
            if psi is None or conf.sampling == "random":
                chosen, how = pick_random(candidates, want, conf.seed + r), "random"
            else:
                q_hat = persona_distribution(ok_prototypes(answered), self.n_personas)
                chosen, how = pick_top(du_scores(candidates, psi, q_hat), want, conf.seed + r), "du"
            chosen = self._pin(chosen)
            self._timed("sampling", started)
            rows = self.label(chosen)
            answered = rows if answered is None else self._pin(answered.unionByName(rows))
            record = self._round_record(how, rows)
            rounds.append(record)
            carry = want - record["answered"]
            log.info("GPLR round %d/%d (%s): %s", r + 1, len(sizes), how, record)
            if record["asked"] == 0:
                break  # nobody left to ask
            if conf.sampling == "du" and (r < len(sizes) - 1 or carry > 0):
                psi = self.affinity(ok_prototypes(answered))
        if answered is None:
            raise ValueError("GPLR: the budget is 0 users; raise gplr.budget_fraction or gplr.budget_users")
        return answered, rounds

    def assign_all(self, answered: DataFrame, rounds: list[dict], assignment: str | None = None) -> LoopResult:
        """Personas for everyone from the answers: LLM labels for prototypes, assigned for the rest."""
        mode = assignment or self.conf.assignment
        prototypes = self._pin(ok_prototypes(answered))
        if prototypes.limit(1).count() == 0:
            raise ValueError("GPLR: no user got a valid persona from the LLM; check the labeling errors in user_labels")
        model, signals = self._fit_and_signals(prototypes, mode)
        started = time.perf_counter()
        unlabelled = signals.join(answered.select("user_idx"), "user_idx", "left_anti")
        # pinned here, so "assignment" is the time the model is applied, not of building a plan
        personas = self._pin(llm_persona_rows(prototypes).unionByName(assign(unlabelled, model, self.n_personas)))
        reach = reach_counts(unlabelled, model, self.affinity_conf.ell)
        self._timed("assignment", started)
        log.info("GPLR reach: %s", reach)
        asked = answered.select("user_idx", "status")
        return LoopResult(prototypes, asked, personas, model, rounds, self.budget(), dict(self.seconds), reach)

    def _round_record(self, how: str, rows: DataFrame) -> dict:
        """Counts per status and the tokens of the answers (for ``reused``: what they cost back then)."""
        per_status = rows.groupBy("status").agg(
            F.count(F.lit(1)).alias("n"), F.sum("prompt_tokens").alias("prompt"), F.sum("completion_tokens").alias("completion"))
        stats = {r["status"]: r for r in per_status.collect()}
        counts = {status: r["n"] for status, r in stats.items()}
        return {"sampling": how, "asked": sum(counts.values()), "ok": counts.get("ok", 0),
                "unrepresentable": counts.get("unrepresentable", 0), "errors": counts.get("error", 0),
                "answered": counts.get("ok", 0) + counts.get("unrepresentable", 0),
                "prompt_tokens": int(sum(r["prompt"] or 0 for r in stats.values())),
                "completion_tokens": int(sum(r["completion"] or 0 for r in stats.values()))}

    def _learned_signals(self, psi: dict[int, DataFrame], items: DataFrame | None) -> DataFrame:
        """Every user with its degree and signal arrays (null where unreached)."""
        frame = self.users.join(self.degrees, "user_idx", "left").fillna(0, ["degree"])
        for name, ell in zip(("psi", "psi2"), LEARNED_DEPTHS):
            frame = frame.join(psi[ell].withColumnRenamed("scores", name), "user_idx", "left")
        if items is not None:
            frame = frame.join(items, "user_idx", "left")
        return frame

    def _fit_and_signals(self, prototypes: DataFrame, mode: str) -> tuple[AssignmentModel, DataFrame]:
        conf = self.conf
        if mode == "topk":
            psi = self.affinity(prototypes).withColumnRenamed("scores", "psi")
            return AssignmentModel("topk", conf.top_k, conf.top_k), self.users.join(psi, "user_idx", "left")
        items = None
        if self.item_vectors is not None:
            graph = self.graph
            vectors = self.item_vectors if isinstance(self.item_vectors, DataFrame) else self.item_vectors(prototypes)
            started = time.perf_counter()
            items = propagate_to_users(graph, vectors, self.affinity_conf, self.checkpoint_mode)
            items = items.withColumnRenamed("vec", "items")
            items = self._pin(items)
            self._timed("affinity", started)
        started = time.perf_counter()
        affinity_before = self.seconds.get("affinity", 0.0)
        train_users, fitted_on = training_sample(prototypes, conf.max_train_users, conf.min_train_per_persona,
                                                 conf.seed + 7919)
        fold_of = F.pmod(seeded_order(conf.seed + 104729), F.lit(conf.cv_folds)).cast("int")
        train_users = self._pin(train_users.withColumn("fold", fold_of))
        held_out = [train_users.filter(F.col("fold") == k).select("user_idx", "weight") for k in range(conf.cv_folds)]
        # each fold's Ψ without its held-out prototypes, and the final Ψ with all of them
        *fold_psi, psi = self.affinity_depths_of_sets(
            [prototypes.join(users, "user_idx", "left_anti") for users in held_out] + [prototypes],
            LEARNED_DEPTHS, beta=0.0)
        folds = [self._collect_fold(self._learned_signals(fold, items).join(users, "user_idx"), prototypes,
                                    items is not None) for fold, users in zip(fold_psi, held_out)]
        self._timed("cross_fitting", started)
        # the folds' Ψ is counted under "affinity": the phases add up to the run
        self.seconds["cross_fitting"] = round(self.seconds["cross_fitting"] - (self.seconds["affinity"] - affinity_before), 3)
        started = time.perf_counter()
        q_hat = persona_distribution(prototypes, self.n_personas)
        model = fit_assignment([f for f in folds if len(f.labels)], q_hat, conf, items is not None)
        model = replace(model, fitted_on=fitted_on)
        self._timed("model_fit", started)
        log.info("assignment model: threshold %.3f, cross-fitted micro-F1 %.4f, fitted on %s", model.threshold,
                 model.cv_micro_f1, fitted_on)
        return model, self._learned_signals(psi, items)

    def _collect_fold(self, signals: DataFrame, prototypes: DataFrame, with_items: bool) -> Fold:
        """A fold's held-out prototypes: signals, degrees, labels and weights to the driver (bounded by max_train_users)."""
        labels = prototypes.groupBy("user_idx").agg(F.collect_list("persona_idx").alias("labels"))
        cols = ["psi", "psi2"] + (["items"] if with_items else [])
        frame = signals.join(labels, "user_idx").select("user_idx", "degree", "weight", "labels", *cols).toPandas()
        y = np.zeros((len(frame), self.n_personas), dtype=np.int8)
        for i, personas in enumerate(frame["labels"]):
            y[i, list(personas)] = 1
        return Fold([_matrix(frame[c], self.n_personas) for c in cols], frame["degree"].to_numpy(), y,
                    frame["weight"].to_numpy())
