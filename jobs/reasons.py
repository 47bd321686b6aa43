"""spark-submit entry point: persona-spark reasons (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["reasons", *sys.argv[1:]]))
