"""spark-submit entry point: persona-spark build-graph (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["build-graph", *sys.argv[1:]]))
