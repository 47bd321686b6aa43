"""persona-spark: customer personas from purchase graphs (GPLR) as Spark jobs.

``import persona_spark as ps`` gives the public API (``ps.__all__``); its names load on first use, so
importing the package stays cheap (Spark's Python workers import it for every task of its code)::

    spark = ps.spark_session()
    orders, personas = ps.demo_shop(spark)
    result = ps.GPLR(labeler=ps.EmbeddingLabeler(), budget=0.05).fit(orders, personas)
    result.personas.show()
"""

from __future__ import annotations

from importlib import metadata

from persona_spark.runtime.worker import skip_zip_rereads_per_task

try:
    __version__ = metadata.version("persona-spark")
except metadata.PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0+unknown"

# name -> the module that defines it
_EXPORTS = {
    "spark_session": "api", "demo_shop": "api", "GPLR": "api", "GPLRResult": "api", "Labeler": "labeling",
    "EmbeddingLabeler": "labeling", "OpenAILabeler": "labeling", "OpenAIBatchLabeler": "labeling",
    "RecordedLabeler": "labeling",
    "load_config": "config", "Config": "config", "RunContext": "stages", "TableStore": "tables.store",
    "PersonaSet": "personas", "load_persona_set": "personas", "PurchaseGraph": "graph",
    "compute_affinity": "affinity", "UserError": "errors",
}

__all__ = [
    "GPLR",
    "Config",
    "EmbeddingLabeler",
    "GPLRResult",
    "Labeler",
    "OpenAIBatchLabeler",
    "OpenAILabeler",
    "PersonaSet",
    "PurchaseGraph",
    "RecordedLabeler",
    "RunContext",
    "TableStore",
    "UserError",
    "__version__",
    "compute_affinity",
    "demo_shop",
    "load_config",
    "load_persona_set",
    "spark_session",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'persona_spark' has no attribute {name!r}")
    from persona_spark import (
        affinity,
        api,
        config,
        errors,
        graph,
        labeling,
        personas,
        stages,
    )
    from persona_spark.tables import store as tables_store

    modules = {"api": api, "config": config, "stages": stages, "tables.store": tables_store, "personas": personas,
               "graph": graph, "affinity": affinity, "errors": errors, "labeling": labeling}
    value = getattr(modules[_EXPORTS[name]], name)
    globals()[name] = value  # found once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


skip_zip_rereads_per_task()  # in a Spark Python worker only: its tasks run this package's code
