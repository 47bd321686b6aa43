"""spark-submit entry point: persona-spark robustness (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["robustness", *sys.argv[1:]]))
