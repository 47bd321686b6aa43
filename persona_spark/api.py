"""The public API for notebooks and scripts: order lines and a persona set in, personas out.

No YAML and no table store needed: the same library calls the stages make, over DataFrames you hold.

Example::

    import persona_spark as ps

    spark = ps.spark_session()
    orders, personas = ps.demo_shop(spark)
    result = ps.GPLR(labeler=ps.EmbeddingLabeler(), budget=0.05).fit(orders, personas)
    result.personas.show()

For runs over the tables a configuration names (what the CLI and the jobs do), open a
:class:`~persona_spark.stages.context.RunContext` and run stages through it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from persona_spark import ingest
from persona_spark.config import (
    DEFAULT_PERSONAS,
    AffinityConf,
    DemoConf,
    GPLRConf,
    LabelingConf,
    SparkConf,
)
from persona_spark.generate import generate
from persona_spark.gplr import GPLRSettings, run_gplr
from persona_spark.graph import PurchaseGraph
from persona_spark.labeling import (
    EmbeddingLabeler,
    Labeler,
    MemoryCache,
    label_entities,
)
from persona_spark.personas import PersonaSet, load_persona_set
from persona_spark.refresh import named_personas
from persona_spark.runtime.checkpoint import release_pins
from persona_spark.runtime.session import get_spark

PERSONA_COLUMNS = ["customer_id", "user_idx", "persona_idx", "persona", "score", "rank", "source", "probability"]


def spark_session(conf: SparkConf | None = None, **settings) -> SparkSession:
    """The active Spark session, else a local one with the Delta connector built from ``conf`` (or the
    :class:`~persona_spark.config.SparkConf` fields in ``settings``, e.g. ``master="local[4]"``)."""
    return get_spark(conf or SparkConf(**settings))


def demo_shop(spark: SparkSession, users: int = 2000, items: int = 600, seed: int = 7) -> tuple[DataFrame, PersonaSet]:
    """A generated shop: order lines with the canonical columns (``customer_id, order_id, item_id, item_name,
    quantity, unit_price, ts``) of ``users`` customers buying from ``items`` named products, and the packaged
    persona set their purchases were drawn from.

    Example::

        orders, personas = ps.demo_shop(spark, users=500)
        orders.groupBy("customer_id").count().show(3)
    """
    persona_set = load_persona_set(DEFAULT_PERSONAS)
    conf = DemoConf(users=users, items=items, seed=seed, dirty_share=0.0)
    raw, _, _ = generate(spark, persona_set, conf)
    return ingest.good_rows(ingest.validate(ingest.to_canonical_strings(raw))), persona_set


@dataclass
class GPLRResult:
    """What :meth:`GPLR.fit` found (nothing written anywhere).

    ``personas``: one row per (customer, persona): ``customer_id, user_idx, persona_idx, persona, score,
    rank, source, probability`` (``source``: ``llm`` for the labelled prototypes, ``propagated`` for the
    rest). ``prototypes``: who was asked (``user_idx, status, history_hash, role``: ``prototype``, or
    ``audit`` for the audit sample). ``summary``: the run's budget, rounds, reach, phases, assignment model and
    audit (its agreement with the labeler, with 95 % intervals), as the gplr stage reports them."""

    personas: DataFrame
    prototypes: DataFrame
    summary: dict
    graph: PurchaseGraph


class GPLR:
    """GPLR over DataFrames: a budget of customers labelled by ``labeler``, personas propagated to everyone.

    ``budget``: a share of the customers (a float, 0 < budget <= 1) or a number of them (an int).
    ``settings``: more :class:`~persona_spark.config.GPLRConf` fields (``rounds``, ``seed``, ``assignment``,
    ``item_signal``, ...); ``affinity`` and ``labeling`` the propagation's and the labeling's settings
    (defaults when None; the labeler replaces the labeling backend). Labels are cached in memory for the
    session, so a second ``fit`` asks again only for what it has not asked yet.

    Example::

        gplr = ps.GPLR(labeler=ps.EmbeddingLabeler(), budget=0.05, rounds=2)
        result = gplr.fit(orders, personas)
        result.personas.filter("source = 'propagated'").show()
    """

    def __init__(self, labeler: Labeler | None = None, budget: float = 0.05, *,
                 affinity: AffinityConf | None = None, labeling: LabelingConf | None = None,
                 checkpoint: str = "local", **settings):
        self.labeler = labeler or EmbeddingLabeler()
        sized = {"budget_users": budget} if isinstance(budget, int) else {"budget_fraction": budget}
        labeling = (labeling or LabelingConf()).model_copy(update={"backend": self.labeler.backend})  # as recorded
        self.settings = GPLRSettings(GPLRConf(**sized, **settings), affinity or AffinityConf(), labeling, checkpoint)
        self._caches: dict[int, MemoryCache] = {}

    def fit(self, purchases: DataFrame | PurchaseGraph, personas: PersonaSet | str | Path) -> GPLRResult:
        """Personas for every customer of ``purchases``: order lines with the canonical columns (see
        :meth:`PurchaseGraph.from_orders`) or a :class:`PurchaseGraph`; ``personas``: a persona set or its file."""
        persona_set = personas if isinstance(personas, PersonaSet) else load_persona_set(personas)
        graph = purchases if isinstance(purchases, PurchaseGraph) else PurchaseGraph.from_orders(purchases)
        # the embedding labeler weighs price / basket / cadence from the order lines
        transactions = purchases if isinstance(self.labeler, EmbeddingLabeler) and graph is not purchases else None
        spark = graph.users.sparkSession
        cache = self._caches.setdefault(id(spark), MemoryCache(spark))

        def label(requests: DataFrame, kind: str) -> DataFrame:
            return label_entities(cache, requests, persona_set, self.settings.labeling, kind, self.labeler)

        run = run_gplr(graph, persona_set, label, self.settings, transactions=transactions)
        names = persona_set.to_dataframe(spark).select("persona_idx", "name")
        named = named_personas(run.outcome.personas, graph.users, names).select(*PERSONA_COLUMNS)
        result = GPLRResult(named, run.prototypes, run.summary, graph)
        release_pins()  # the intermediates of the run; what the result needs it holds itself
        return result
