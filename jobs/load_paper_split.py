"""spark-submit entry point: persona-spark load-paper-split (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["load-paper-split", *sys.argv[1:]]))
