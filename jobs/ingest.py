"""spark-submit entry point: persona-spark ingest (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["ingest", *sys.argv[1:]]))
