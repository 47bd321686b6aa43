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
    EmbeddingLabelConf,
    GenerateConf,
    GPLRConf,
    LabelingConf,
    OpenAIConf,
    RecordedConf,
    SparkConf,
)
from persona_spark.generate import generate
from persona_spark.gplr import GPLRSettings, run_gplr
from persona_spark.graph import PurchaseGraph
from persona_spark.labeling import label_entities
from persona_spark.personas import PersonaSet, load_persona_set
from persona_spark.refresh import named_personas
from persona_spark.runtime.session import get_spark
from persona_spark.stages.labeling import label_conf_for

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
    conf = GenerateConf(users=users, items=items, seed=seed, dirty_share=0.0)
    raw, _, _ = generate(spark, persona_set, conf)
    return ingest.good_rows(ingest.validate(ingest.to_canonical_strings(raw))), persona_set


class Labeler:
    """Who answers the label requests: one of :class:`EmbeddingLabeler`, :class:`OpenAILabeler`,
    :class:`OpenAIBatchLabeler`, :class:`RecordedLabeler`. Its keyword arguments are the fields of its
    configuration section (``labeling.<section>``)."""

    backend: str  # the labeling.backend value
    section: str  # the LabelingConf field holding the settings
    settings_type: type

    def __init__(self, **fields):
        self.settings = self.settings_type(**fields)

    def labeling_conf(self, base: LabelingConf | None = None) -> LabelingConf:
        """``base`` (the defaults when None) answering through this labeler."""
        base = base or LabelingConf()
        return base.model_copy(update={"backend": self.backend, self.section: self.settings})

    def __repr__(self) -> str:
        changed = ", ".join(f"{k}={v!r}" for k, v in self.settings.model_dump(exclude_unset=True).items())
        return f"{type(self).__name__}({changed})"


class EmbeddingLabeler(Labeler):
    """Offline, free: product names against persona descriptions with a sentence-embedding model.

    Example: ``ps.EmbeddingLabeler(temperature=0.5)``."""

    backend, section, settings_type = "embedding", "embedding", EmbeddingLabelConf


class OpenAILabeler(Labeler):
    """Any OpenAI-protocol chat endpoint, one request per user (or a few, ``users_per_request``).

    Example: ``ps.OpenAILabeler(model="gpt-4o-mini", base_url="http://localhost:8000/v1", api_key_env="MY_KEY")``."""

    backend, section, settings_type = "openai", "openai", OpenAIConf


class OpenAIBatchLabeler(Labeler):
    """The OpenAI Batch API: the same requests as :class:`OpenAILabeler` at half the price, within a day.

    Example: ``ps.OpenAIBatchLabeler(model="gpt-4o-mini")``."""

    backend, section, settings_type = "openai_batch", "openai", OpenAIConf


class RecordedLabeler(Labeler):
    """Replays labels an LLM gave earlier (a JSON file or a table of ``<id>, persona_idx``).

    Example: ``ps.RecordedLabeler(path="labels/users.json", item_path="labels/items.json")``."""

    backend, section, settings_type = "recorded", "recorded", RecordedConf


class MemoryCache:
    """``labeling.LabelCache`` held in the Spark application: answers are reused within the session and
    nothing is persisted (a table store keeps them across runs: use a RunContext for that)."""

    def __init__(self, spark: SparkSession):
        self.spark = spark
        self.frames: dict[str, DataFrame] = {}

    def read(self, name: str) -> DataFrame | None:
        return self.frames.get(name)

    def append(self, name: str, rows: DataFrame) -> None:
        rows = rows.localCheckpoint()  # the rows as labelled: a re-evaluation would call the labeler again
        self.frames[name] = rows if name not in self.frames else self.frames[name].unionByName(rows)

    def replace(self, name: str, rows: DataFrame) -> None:
        self.frames[name] = rows.localCheckpoint()


@dataclass
class GPLRResult:
    """What :meth:`GPLR.fit` found (nothing written anywhere).

    ``personas``: one row per (customer, persona): ``customer_id, user_idx, persona_idx, persona, score,
    rank, source, probability`` (``source``: ``llm`` for the labelled prototypes, ``propagated`` for the
    rest). ``prototypes``: who was asked (``user_idx, status, history_hash``). ``summary``: the run's
    budget, rounds, reach, phases and assignment model, as the gplr stage reports them."""

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
        self.settings = GPLRSettings(GPLRConf(**sized, **settings), affinity or AffinityConf(),
                                     self.labeler.labeling_conf(labeling), checkpoint)
        self._caches: dict[int, MemoryCache] = {}

    def fit(self, purchases: DataFrame | PurchaseGraph, personas: PersonaSet | str | Path) -> GPLRResult:
        """Personas for every customer of ``purchases``: order lines with the canonical columns (see
        :meth:`PurchaseGraph.from_orders`) or a :class:`PurchaseGraph`; ``personas``: a persona set or its file."""
        persona_set = personas if isinstance(personas, PersonaSet) else load_persona_set(personas)
        graph = purchases if isinstance(purchases, PurchaseGraph) else PurchaseGraph.from_orders(purchases)
        # the embedding labeler weighs price / basket / cadence from the order lines
        transactions = purchases if self.settings.labeling.backend == "embedding" and graph is not purchases else None
        spark = graph.users.sparkSession
        cache = self._caches.setdefault(id(spark), MemoryCache(spark))

        def label(requests: DataFrame, kind: str) -> DataFrame:
            conf = label_conf_for(self.settings.labeling, kind)
            return label_entities(cache, requests, persona_set, conf, kind)

        run = run_gplr(graph, persona_set, label, self.settings, transactions=transactions)
        names = persona_set.to_dataframe(spark).select("persona_idx", "name")
        named = named_personas(run.outcome.personas, graph.users, names).select(*PERSONA_COLUMNS)
        return GPLRResult(named, run.prototypes, run.summary, graph)
