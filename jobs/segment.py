"""spark-submit entry point: persona-spark segment (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["segment", *sys.argv[1:]]))
