"""spark-submit entry point: persona-spark label-users (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["label-users", *sys.argv[1:]]))
