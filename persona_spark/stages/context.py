"""One run's context: config, Spark session, table store and persona set, built once per run.

Every stage is ``fn(ctx) -> summary dict``. The CLI, ``jobs/*.py``, the notebooks and the public API
open one :class:`RunContext` and run stages through it, so nothing re-reads the config, reloads the
persona set or prepares the checkpoint directory again inside a run. ``RunContext.run`` is where every
stage starts: it holds the tables' lease (``persona_spark.tables.lease``) while a writing stage runs, so
a second run on the same tables stops before it does anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property

from pyspark.sql import DataFrame, SparkSession

from persona_spark.config import Config, load_config
from persona_spark.errors import UserError
from persona_spark.gplr import GPLRSettings
from persona_spark.personas import PersonaSet, load_persona_set
from persona_spark.redaction import redact_exception, register
from persona_spark.runtime.checkpoint import checkpoint, ensure_checkpoint_dir, release_pins
from persona_spark.runtime.runs import new_run
from persona_spark.runtime.session import describe_master, get_spark
from persona_spark.tables.lease import Lease
from persona_spark.tables.store import TableStore, lease_location

log = logging.getLogger("persona_spark")

Stage = Callable[["RunContext"], dict]
# The stages by their CLI names, in the CLI's order; ``persona_spark.stages`` fills it when it is imported,
# which Python does before any of its submodules (this one included).
STAGES: dict[str, Stage] = {}
# Stages that write no table, so they run beside a run holding the tables' lease.
LEASE_FREE_STAGES = frozenset({"report"})


class RunContext:
    """What every stage of a run reads: the config, the session, the tables and the persona set.

    Example::

        ctx = RunContext.open("conf/local.yaml", ["gplr.budget_fraction=0.1"])
        ctx.run("generate"); ctx.run("ingest"); ctx.run("build-graph")
        summary = ctx.run("gplr")
        ctx.table("personas").show()
    """

    def __init__(self, cfg: Config, store: TableStore, conf_path: str | None = None):
        self.cfg = cfg
        self.store = store
        self.conf_path = conf_path
        # Everything this process writes from here on (rows, files, logs) goes without the configured key.
        register(os.environ.get(cfg.labeling.openai.api_key_env))
        if self.checkpoint_mode == "reliable":  # reliable checkpoints need a directory, set once for the run
            ensure_checkpoint_dir(store.spark, cfg.spark.checkpoint_dir)

    @classmethod
    def open(cls, conf_path: str | None = None, overrides: list[str] | None = None) -> RunContext:
        """Load the config (``conf_path``, else the defaults) with ``overrides`` (``section.key=value``), get the
        Spark session (an active one is reused) and the table store."""
        cfg = load_config(conf_path, overrides)
        spark = get_spark(cfg.spark)
        log.info("persona-spark run on %s", describe_master(spark))
        return cls(cfg, TableStore(spark, cfg.tables), conf_path)

    @property
    def spark(self) -> SparkSession:
        return self.store.spark

    @property
    def checkpoint_mode(self) -> str:
        """How intermediates are pinned: ``local``, or ``reliable`` (survives a lost executor)."""
        return self.cfg.spark.checkpoint

    @property
    def gplr_settings(self) -> GPLRSettings:
        """What a GPLR run reads of the config."""
        return GPLRSettings(self.cfg.gplr, self.cfg.affinity, self.cfg.labeling, self.checkpoint_mode)

    @cached_property
    def persona_set(self) -> PersonaSet:
        """The configured persona set, loaded once."""
        return load_persona_set(self.cfg.personas)

    def pin(self, df: DataFrame) -> DataFrame:
        """Materialize an intermediate result the way the run checkpoints."""
        return checkpoint(df, self.checkpoint_mode)

    def table(self, name: str) -> DataFrame | None:
        """The table if a stage has written it, else None (so a notebook can say what to run)."""
        return self.store.read_table(name) if self.store.exists(name) else None

    def run(self, stage: str) -> dict:
        """Run one stage by its CLI name (``persona-spark --help`` lists them); its summary."""
        if stage not in STAGES:
            raise UserError(f"no stage {stage!r}; the stages are {', '.join(STAGES)}")
        try:
            with self.lease(stage):
                return STAGES[stage](self) or {}
        except Exception as error:  # a provider's error may quote the key: whoever prints it shows it redacted
            redact_exception(error)
            raise
        finally:
            release_pins()

    @contextmanager
    def lease(self, stage: str) -> Iterator[None]:
        """Hold the tables' lease while ``stage`` runs (``LeaseHeld``, a user error, when another run does)."""
        location = lease_location(self.cfg.tables)
        if location is None or stage in LEASE_FREE_STAGES:
            yield
            return
        with Lease(location, self.cfg.tables.lease_ttl_minutes * 60, stage, new_run()[0]):
            yield
