"""spark-submit entry point: persona-spark label-items (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["label-items", *sys.argv[1:]]))
