"""What the package changes in Spark's Python workers (persona_spark/runtime/worker.py), checked in real workers."""

from __future__ import annotations

import sys
import zipimport

import pyarrow as pa

EAGER_ZIP_INVALIDATION = (3, 10) <= sys.version_info < (3, 12)


def _worker_report(batches):
    """Runs in a Python worker: which ``invalidate_caches`` its zip importers have, and whether a module
    still imports from pyspark.zip after an invalidation (what Spark does before every task)."""
    import importlib

    import persona_spark  # noqa: F401  (what unpickling a task of this package's code does)
    for _ in batches:
        pass
    importlib.invalidate_caches()
    linalg = importlib.import_module("pyspark.ml.linalg")
    yield pa.RecordBatch.from_pylist([{"invalidate": zipimport.zipimporter.invalidate_caches.__qualname__,
                                       "module_file": linalg.__file__}])


def test_workers_keep_zip_directories_across_tasks_and_still_import_from_them(spark):
    rows = spark.range(0, 4, 1, 2).mapInArrow(_worker_report, "invalidate string, module_file string").collect()
    assert len(rows) == 2
    expected = "_keep_zip_directory" if EAGER_ZIP_INVALIDATION else "zipimporter.invalidate_caches"
    assert {row.invalidate for row in rows} == {expected}
    # read from inside pyspark.zip (ahead of site-packages on a worker's path) after the invalidation
    assert all(row.module_file.endswith(".zip/pyspark/ml/linalg/__init__.py") for row in rows), rows
