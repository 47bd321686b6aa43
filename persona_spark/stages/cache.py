"""The label caches as the labeling library sees them: the only tables it may read and append to.

The library (``persona_spark.labeling``) never holds the table store. It gets this object, whose
``read`` / ``append`` / ``replace`` reach the cache tables only (answers paid for, item embeddings,
the Batch API ledger); every other table a labeling run needs is read here, at the edge, and passed
in as a DataFrame (``selection_table``, ``recording``).
"""

from __future__ import annotations

from pyspark.sql import DataFrame

from persona_spark import labeling, tables
from persona_spark.config import LabelingConf, RecordedConf, SelectionConf
from persona_spark.tables.store import TableStore
from persona_spark.personas import PersonaSet

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


def recording(store: TableStore, conf: RecordedConf, id_col: str) -> DataFrame | None:
    """The labels a recorded backend replays: its table, else its JSON file (``None`` for other backends)."""
    if conf.table:
        return store.read_table(conf.table)
    if conf.path:
        return labeling.read_recording(store.spark, conf.path, id_col)
    return None


def make_backend(conf: LabelingConf, persona_set: PersonaSet, kind: str, store: TableStore):
    """The configured labeler for users or items, given what it reads from the run's tables."""
    replayed = recording(store, conf.recorded, labeling.KINDS[kind].id_col) if conf.backend == "recorded" else None
    return labeling.make_backend(conf, persona_set, kind, TableCache(store), replayed)


def label_entities(store: TableStore, requests: DataFrame, persona_set: PersonaSet, conf: LabelingConf,
                   kind: str = "user") -> DataFrame:
    """``labeling.label_entities`` over the run's cache tables."""
    backend = make_backend(conf, persona_set, kind, store)
    return labeling.label_entities(TableCache(store), requests, persona_set, conf, kind, backend)


def store_cache_rows(store: TableStore, backend) -> None:
    """Append what a backend used on its own (outside ``label_entities``) made for its caches."""
    cache = TableCache(store)
    for name, rows in backend.cache_rows().items():
        cache.append(name, rows)
