"""The unit tier starts no JVM, so it runs anywhere in seconds: a test here that asks for Spark fails, saying where
it belongs."""

from __future__ import annotations

import pytest

NO_JVM = "tests/unit starts no JVM: a test that needs a Spark session belongs in tests/spark (or tests/e2e)"


@pytest.fixture(scope="session")
def spark():
    pytest.fail(NO_JVM, pytrace=False)


@pytest.fixture(autouse=True)
def _refuse_jvm_launch(monkeypatch):
    """Also catches a session started without the fixture (``get_spark``, ``RunContext.open``, a stage)."""
    try:
        from pyspark.core import context
    except ImportError:  # without pyspark nothing can start a JVM
        return

    def refuse(*args, **kwargs):
        raise AssertionError(NO_JVM)

    monkeypatch.setattr(context, "launch_gateway", refuse)
