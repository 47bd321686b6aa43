"""spark-submit entry point: persona-spark gplr (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["gplr", *sys.argv[1:]]))
