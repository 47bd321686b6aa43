"""Graph choices made without a JVM: which connected-components algorithm runs, which jars GraphFrames needs."""

from __future__ import annotations

from importlib import metadata

import pytest

from persona_spark.config import SparkConf
from persona_spark.graph import AUTO_WITH_GRAPHFRAMES, GRAPHFRAMES_ALGORITHMS, pick_components_algorithm
from persona_spark.runtime.session import graphframes_coordinates, jar_settings


@pytest.mark.parametrize(("requested", "available", "runs"), [
    ("large-star", True, "large-star"), ("large-star", False, "large-star"),
    ("graphframes", True, "graphframes"), ("graphx", False, "graphx"),  # refused later, with a message
    ("auto", False, "large-star"), ("auto", True, AUTO_WITH_GRAPHFRAMES),
])
def test_auto_takes_graphframes_only_where_the_session_has_it(requested, available, runs):
    assert pick_components_algorithm(requested, available) == runs
    assert AUTO_WITH_GRAPHFRAMES in (*GRAPHFRAMES_ALGORITHMS, "large-star")


def test_graphframes_jars_come_from_maven_at_the_python_package_version():
    version = metadata.version("graphframes-py")
    assert graphframes_coordinates() == [f"io.graphframes:graphframes-spark4_2.13:{version}",
                                         f"io.graphframes:graphframes-graphx-spark4_2.13:{version}"]
    packages = jar_settings(SparkConf(graphframes=True))["spark.jars.packages"].split(",")
    assert packages[0].startswith("io.delta:delta-spark_2.13:") and packages[1:] == graphframes_coordinates()
    assert not any("graphframes" in p for p in jar_settings(SparkConf())["spark.jars.packages"].split(","))
