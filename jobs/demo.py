"""spark-submit entry point: persona-spark demo (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["demo", *sys.argv[1:]]))
