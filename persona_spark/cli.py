"""``persona-spark <stage> --conf conf/local.yaml --set section.key=value``.

The CLI, the ``jobs/*.py`` spark-submit scripts and the Databricks bundle all call the same
stage functions in ``persona_spark.stages``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from persona_spark.config import load_config


def build_parser() -> argparse.ArgumentParser:
    from persona_spark.stages import STAGES

    parser = argparse.ArgumentParser(prog="persona-spark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, fn in STAGES.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--conf", help="YAML config file (defaults run on a laptop)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. --set affinity.ell=3 (repeatable)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from persona_spark.audience import AudienceError
    from persona_spark.io import TableStore
    from persona_spark.session import get_spark
    from persona_spark.stages import STAGES

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.conf, args.overrides)
    spark = get_spark(cfg.spark)
    store = TableStore(spark, cfg.tables)
    try:
        summary = STAGES[args.stage](cfg, store)
    except AudienceError as error:  # a mistyped query is the user's to fix: say what is wrong, no traceback
        print(f"persona-spark {args.stage}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"stage": args.stage, **(summary or {})}, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
