"""spark-submit entry point: persona-spark report (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["report", *sys.argv[1:]]))
