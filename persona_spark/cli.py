"""``persona-spark <stage> --conf conf/local.yaml --set section.key=value``.

The CLI, the ``jobs/*.py`` spark-submit scripts and the Databricks bundle all open one
``RunContext`` and run the same stage functions in ``persona_spark.stages`` through it.

Exit status: 0 done; 2 a mistake the user can fix (unknown or out-of-bounds setting, missing table,
column or path), told in one line on stderr, with the traceback only under ``--debug``; 1 (with the
traceback) anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback

from persona_spark.errors import UserError

log = logging.getLogger("persona_spark.cli")

# Spark's error conditions that mean the user named something that is not there.
SPARK_USER_ERRORS = ("PATH_NOT_FOUND", "TABLE_OR_VIEW_NOT_FOUND", "UNRESOLVED_COLUMN", "DELTA_TABLE_NOT_FOUND",
                     "DELTA_MISSING_DELTA_TABLE", "DELTA_PATH_DOES_NOT_EXIST")
USER_ERROR_STATUS = 2


def build_parser() -> argparse.ArgumentParser:
    from persona_spark.stages import STAGES

    parser = argparse.ArgumentParser(prog="persona-spark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, fn in STAGES.items():
        p = sub.add_parser(name, help=(fn.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--conf", help="YAML config file (defaults run on a laptop)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one setting, e.g. --set affinity.ell=3 (repeatable)")
        p.add_argument("--debug", action="store_true", help="debug logging, and the traceback of a user error")
    return parser


def user_error_message(error: BaseException) -> str | None:
    """The one line to print when ``error`` is the user's mistake, else None (a bug or an outage)."""
    from pyspark.errors import AnalysisException

    if isinstance(error, (UserError, FileNotFoundError)):
        return " ".join(str(error).split())
    if isinstance(error, AnalysisException):
        condition = error.getCondition() or ""
        if condition.split(".")[0] in SPARK_USER_ERRORS:
            return str(error).strip().splitlines()[0]
    return None


def main(argv: list[str] | None = None) -> int:
    from persona_spark.stages import RunContext

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = RunContext.open(args.conf, args.overrides).run(args.stage)
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        if args.debug:
            traceback.print_exc()
        else:  # kept for a log handler at debug level
            log.debug("persona-spark %s stopped on a user error", args.stage, exc_info=True)
        print(f"persona-spark {args.stage}: error: {message}", file=sys.stderr)
        return USER_ERROR_STATUS
    print(json.dumps({"stage": args.stage, **(summary or {})}, default=str, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
