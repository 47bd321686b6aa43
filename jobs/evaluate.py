"""spark-submit entry point: persona-spark evaluate (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["evaluate", *sys.argv[1:]]))
