"""spark-submit entry point: persona-spark cold-start (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["cold-start", *sys.argv[1:]]))
