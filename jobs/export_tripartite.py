"""spark-submit entry point: persona-spark export-tripartite (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["export-tripartite", *sys.argv[1:]]))
