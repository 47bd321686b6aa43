"""What this package changes in the Spark Python worker processes that import it (nothing in the driver)."""

from __future__ import annotations

import sys
import zipimport

_EAGER_ZIP_INVALIDATION = (3, 10) <= sys.version_info < (3, 12)


def _keep_zip_directory(self) -> None:
    """``zipimporter.invalidate_caches`` that keeps the archive's directory: a worker's archives never change."""


def in_spark_worker() -> bool:
    main = getattr(sys.modules.get("__main__"), "__spec__", None)
    return main is not None and main.name in ("pyspark.daemon", "pyspark.worker")


def skip_zip_rereads_per_task() -> bool:
    """Stop every Spark task from rereading the directories of the zip archives on the worker's ``sys.path``.

    Spark calls ``importlib.invalidate_caches()`` at the start of every Python task (pyspark's
    ``setup_spark_files``). On Python 3.10 and 3.11 that makes each zip importer reread its archive's
    whole directory in pure Python (CPython gh-103200, made lazy in 3.12): pyspark.zip, py4j, the
    5,000-entry spark-core jar and every ``--packages`` jar, on every task. A worker's archives do not
    change while it lives (Spark adds each file once, under a name of its own, and a newly added archive
    gets a new importer), so in a worker on those versions the reread is skipped. The package's import
    calls this, so it takes effect in every worker that runs a task of this package's code; in the driver,
    and on other Python versions, it changes nothing. ``benchmarks/worker_zip_cache.py`` measures what a
    task saves. Returns whether the reread is skipped.
    """
    if not (_EAGER_ZIP_INVALIDATION and in_spark_worker()):
        return False
    zipimport.zipimporter.invalidate_caches = _keep_zip_directory
    return True
