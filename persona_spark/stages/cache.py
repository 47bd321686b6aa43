"""The label caches as the labeling library sees them: the only tables it may read and append to.

The library (``persona_spark.labeling``) never holds the table store. It gets this object, whose
``read`` / ``append`` / ``replace`` reach the cache tables only (answers paid for, item embeddings,
the Batch API ledger); every other table a labeling run needs is read here, at the edge, and passed
in as a DataFrame (``selection_table``, a recorded labeler's table in ``configured_labeler``).
"""

from __future__ import annotations

from pyspark.sql import DataFrame

from persona_spark import labeling, tables
from persona_spark.config import LabelingConf, SelectionConf
from persona_spark.personas import PersonaSet
from persona_spark.tables.store import TableStore

CACHE_TABLES = frozenset({tables.USER_LABELS, tables.ITEM_LABELS, tables.ITEM_EMBEDDINGS, tables.BATCH_LEDGER})


class TableCache:
    """``labeling.LabelCache`` over the run's tables."""

    def __init__(self, store: TableStore):
        self.store = store
        self.spark = store.spark

    def _checked(self, name: str) -> str:
        if name not in CACHE_TABLES:
            raise ValueError(f"{name!r} is no label cache table (those are {sorted(CACHE_TABLES)})")
        return name

    def read(self, name: str) -> DataFrame | None:
        name = self._checked(name)
        return self.store.read_table(name) if self.store.exists(name) else None

    def append(self, name: str, rows: DataFrame) -> None:
        self.store.write_table(rows, self._checked(name), mode="append")

    def replace(self, name: str, rows: DataFrame) -> None:
        self.store.write_table(rows, self._checked(name), mode="overwrite")


def selection_table(store: TableStore, selection: SelectionConf) -> DataFrame | None:
    """The table that lists the entities to label, when ``selection.mode`` is 'table'."""
    return store.read_table(selection.table) if selection.mode == "table" and selection.table else None


def configured_labeler(conf: LabelingConf, store: TableStore) -> labeling.Labeler:
    """The labeler ``labeling.backend`` names, with what it reads from the run's tables (a recorded
    labeler's ``recorded.table`` / ``recorded.item_table``)."""
    labeler = labeling.labeler_from_config(conf)
    if isinstance(labeler, labeling.RecordedLabeler):
        named = {"user": conf.recorded.table, "item": conf.recorded.item_table}
        labeler = labeler.with_recordings(**{kind: store.read_table(table) for kind, table in named.items() if table})
    return labeler


def bind_labeler(labeler: labeling.Labeler, conf: LabelingConf, persona_set: PersonaSet, kind: str, store: TableStore):
    """``labeler`` for users or items over the run's caches, to call ``label(requests)`` on directly."""
    return labeler.bind(conf, persona_set, labeling.KINDS[kind], TableCache(store))


def label_entities(store: TableStore, requests: DataFrame, persona_set: PersonaSet, conf: LabelingConf,
                   kind: str = "user", labeler: labeling.Labeler | None = None) -> DataFrame:
    """``labeling.label_entities`` over the run's cache tables, by ``labeler`` (default: the configured one)."""
    labeler = configured_labeler(conf, store) if labeler is None else labeler
    return labeling.label_entities(TableCache(store), requests, persona_set, conf, kind, labeler)


def store_cache_rows(store: TableStore, bound) -> None:
    """Append what a bound labeler used on its own (outside ``label_entities``) made for its caches."""
    cache = TableCache(store)
    for name, rows in bound.cache_rows().items():
        cache.append(name, rows)
