"""spark-submit entry point: persona-spark generate (same function as the CLI)."""
import sys

from persona_spark.cli import main

sys.exit(main(["generate", *sys.argv[1:]]))
