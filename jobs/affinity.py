"""spark-submit entry point: persona-spark affinity (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["affinity", *sys.argv[1:]]))
