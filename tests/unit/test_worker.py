"""The driver keeps Python's own zip invalidation: persona_spark/runtime/worker.py changes it in Spark's workers
only."""

from __future__ import annotations

import zipimport

from persona_spark.runtime.worker import skip_zip_rereads_per_task


def test_the_driver_keeps_pythons_own_zip_invalidation():
    assert skip_zip_rereads_per_task() is False  # pytest is not a Spark worker
    assert zipimport.zipimporter.invalidate_caches.__qualname__ == "zipimporter.invalidate_caches"
