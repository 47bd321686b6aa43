"""spark-submit entry point: persona-spark audience (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["audience", *sys.argv[1:]]))
