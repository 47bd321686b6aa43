"""spark-submit entry point: persona-spark export (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["export", *sys.argv[1:]]))
