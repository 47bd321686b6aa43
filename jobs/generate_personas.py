"""spark-submit entry point: persona-spark generate-personas (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["generate-personas", *sys.argv[1:]]))
