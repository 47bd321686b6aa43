"""spark-submit entry point: persona-spark train (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
