"""``persona-spark <stage> --conf conf/local.yaml --set section.key=value``.

The CLI, the ``jobs/*.py`` spark-submit scripts and the Databricks bundle all open one
``RunContext`` and run the same stage functions in ``persona_spark.stages`` through it.

Exit status: 0 done; 2 a mistake the user can fix (unknown or out-of-bounds setting, missing table,
column or path, tables in use by another run, a Delta write that lost to a concurrent one), told in one
line on stderr, with the traceback only under ``--debug``; 3 a quality alert: the gplr run wrote its
tables and printed its summary, but its audit estimate fails ``gplr.min_audit_micro_f1`` (one line on
stderr says by how much); 1 (with the traceback) anything else. What
the CLI prints passes through ``persona_spark.redaction.redact``, as do log records and tracebacks.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import traceback

from persona_spark.errors import QualityAlert, UserError
from persona_spark.redaction import redact

log = logging.getLogger("persona_spark.cli")

# Spark's error conditions that mean the user named something that is not there.
SPARK_USER_ERRORS = ("PATH_NOT_FOUND", "TABLE_OR_VIEW_NOT_FOUND", "UNRESOLVED_COLUMN", "DELTA_TABLE_NOT_FOUND",
                     "DELTA_MISSING_DELTA_TABLE", "DELTA_PATH_DOES_NOT_EXIST")
USER_ERROR_STATUS = 2
# Delta's commit conflicts: another writer committed to the same table while this write ran (a run without the
# tables' lease). Matched in the text because they arrive as Delta's Python exceptions, a Py4JJavaError or a
# Spark Connect error, depending on the session.
DELTA_CONFLICT = re.compile(r"\[(DELTA_CONCURRENT_[A-Z_]+|DELTA_METADATA_CHANGED|DELTA_PROTOCOL_CHANGED)\]\s*"
                            r"(?:[\w.]+Exception:\s*)?([^\n]*)")


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
    conflict = DELTA_CONFLICT.search(str(error)[:20000])
    if conflict:
        return (f"another writer committed to the same Delta table while this stage wrote it ({conflict.group(1)}: "
                f"{conflict.group(2).strip()[:200]}); this write committed nothing. Run one writer per tables root at a "
                "time (the tables' lease does that unless tables.lease=false), then run the stage again")
    return None


def main(argv: list[str] | None = None) -> int:
    from persona_spark.stages import RunContext

    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # basicConfig does nothing when a library (or a notebook) configured logging first; the package's own
    # progress lines still reach whatever handlers are there.
    logging.getLogger("persona_spark").setLevel(level)
    try:
        summary = RunContext.open(args.conf, args.overrides).run(args.stage)
    except QualityAlert as alert:
        print(redact(json.dumps({"stage": args.stage, **alert.summary}, default=str, indent=2)))
        print(redact(f"persona-spark {args.stage}: {alert}"), file=sys.stderr)
        return QualityAlert.STATUS
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise
        if args.debug:
            print(redact(traceback.format_exc()), end="", file=sys.stderr)
        else:  # kept for a log handler at debug level
            log.debug("persona-spark %s stopped on a user error", args.stage, exc_info=True)
        print(redact(f"persona-spark {args.stage}: error: {message}"), file=sys.stderr)
        return USER_ERROR_STATUS
    print(redact(json.dumps({"stage": args.stage, **(summary or {})}, default=str, indent=2)))
    return 0



def _one_line(text: str) -> str:
    """A docstring as one Markdown line (Sphinx roles dropped, pipes escaped for tables)."""
    return " ".join(text.split()).replace(":func:", "").replace("|", "\\|")


def cli_reference() -> str:
    """docs/reference/cli.md: the options every stage takes, then each stage, what it does and what it writes."""
    from persona_spark import tables
    from persona_spark.stages import STAGES

    parser = build_parser()
    stage_parser = next(iter(parser._subparsers._group_actions[0].choices.values()))  # the same options for all
    for p in (parser, stage_parser):  # a fixed width: the page must not depend on the terminal that generated it
        p.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
    lines = ["# Command-line reference", "",
             "Generated from `persona_spark/cli.py`'s parser and the stage registry (`python docs/gen_reference.py`).",
             "", *(__doc__ or "").strip().splitlines()[2:], "",
             "```text", parser.format_usage().strip(), "```", "",
             "Every stage takes the same options:", "", "```text",
             stage_parser.format_help().split("options:", 1)[1].strip("\n"), "```", "",
             "Settings and their defaults: [configuration](configuration.md). Tables: [tables](tables.md).", "",
             "| stage | what it does | writes |", "|---|---|---|"]
    for name, fn in STAGES.items():
        summary = _one_line((fn.__doc__ or "").strip().split("\n\n")[0])
        written = ", ".join(f"[`{t}`](tables.md#{t})" for t, by in tables.WRITTEN_BY.items() if by == name)
        lines.append(f"| [`{name}`](#{name}) | {summary} | {written} |")
    for name, fn in STAGES.items():
        doc = _one_line(fn.__doc__ or "")
        lines += ["", f"## `{name}`", "", "```bash", f"persona-spark {name} --conf conf/local.yaml", "```", "", doc]
    return "\n".join(lines) + "\n"


# Columns of the tables whose writer has no schema constant, as the writing code leaves them.
DOCUMENTED_COLUMNS = {
    "planted_personas": "customer_id string, persona_idx bigint",
    "transactions": "customer_id string, order_id string, item_id string, item_name string, quantity bigint, "
                    "unit_price double, ts timestamp, order_number bigint, days_since_prior_order double, batch_id string",
    "edges": "user_idx int, item_idx int, n_purchases int, quantity bigint, first_ts timestamp, "
             "last_ts timestamp, split string",
    "reference_personas": "user_idx int, persona_idx int",
    "reference_item_personas": "item_idx int, persona_idx int",
    "generated_persona_sets": "persona_idx int, name string, description string, version string, title string, "
                              "model string, created timestamp",
    "gplr_prototypes": "user_idx int, status string, role string (prototype | audit), history_hash string",
    "gplr_runs": "run_id string, run_ts timestamp, budget bigint, rounds int, sampling string, assignment string, "
                 "seed int, eps double, ell int, beta double, versions string, details string",
    "persona_transitions": "from_run_id string, to_run_id string, from_ts timestamp, to_ts timestamp, "
                           "persona_idx int, persona string, customers_before bigint, customers_after bigint, "
                           "kept bigint, gained bigint, lost bigint, customers bigint, customers_changed bigint, "
                           "share_changed double",
    "persona_flows": "from_run_id string, to_run_id string, from_persona_idx int, to_persona_idx int, "
                     "customers bigint",
    "persona_catalog": "run_id string, persona_idx int, name string, description string, "
                       "persona_set_version string, customers bigint, llm_share double, propagated_share double, "
                       "top_products array<string>, distinctive_products array<string>",
    "persona_calibration": "run_id string, bin int, lower double, upper double, pairs bigint, "
                           "mean_predicted double, observed double",
    "persona_reasons": "run_id string, user_idx int, customer_id string, persona_idx int, "
                       "items array<struct<item_idx, item_name, contribution, share>>, "
                       "neighbours array<struct<user_idx, customer_id, contribution, share>>",
    "prototype_labels": "user_idx int, persona_idx int, weight double",
    "affinity": "user_idx int, persona_idx int, score double",
    "evaluation": "run_id string, method string, reference string, users bigint, micro_f1 double, "
                  "macro_f1 double, precision double, recall double, baseline_micro_f1 double, run_ts timestamp",
    "evaluation_per_persona": "run_id string, persona_idx int, tp bigint, predicted bigint, actual bigint, "
                              "precision double, recall double, f1 double, run_ts timestamp",
    "segments": "representation string, user_idx int, k int, segment int",
    "segment_points": "representation string, user_idx int, x double, y double, z double",
    "silhouette": "representation string, k int, clusters int, silhouette double",
    "rfm_parts": "part string, computed boolean, source string",
    "segment_summary": "k int, segment int, size bigint, share double, "
                       "personas array<struct<persona_idx, name, share, lift>>, "
                       "top_items array<struct<item_idx, item_name, buyers, share, lift>>, description string",
    "robustness": "representation string, users bigint, unchanged bigint, share_unchanged double",
    "audience_members": "audience string, run_id string, run_ts timestamp, query string, user_idx int, customer_id string",
    "audience_changes": "audience string, run_id string, previous_run_id string, user_idx int, customer_id string, "
                        "change string (added | removed)",
}


def table_columns() -> dict[str, str]:
    """Each table's columns: the writer's schema constant where it has one, else ``DOCUMENTED_COLUMNS``."""
    from persona_spark import audit, generate, gplr, graph, ingest, refresh
    from persona_spark.affinity.engine import TILE_FIELDS
    from persona_spark.labeling.base import label_schema
    from persona_spark.labeling.batch import LEDGER_SCHEMA
    from persona_spark.labeling.embedding import ITEM_EMBEDDINGS_SCHEMA
    from persona_spark.recommend.coldstart_batch import RECS_SCHEMA
    from persona_spark.stages import RECOMMEND_RUNS_SCHEMA

    from_code = {
        "raw_transactions": generate.RAW_SCHEMA,
        "persona_set": "persona_idx int, name string, description string, version string",
        "quarantine": ", ".join(f"{name} string" for name in [*ingest.CANONICAL, "reason", "source"])
                      + ", ingested_at timestamp, batch_id string, raw_line string",
        "users": graph.USERS_SCHEMA,
        "items": graph.ITEMS_SCHEMA,
        "edge_tiles": ", ".join(f"{name} {kind}" for name, kind in TILE_FIELDS) + ", layout string (JSON)",
        "user_labels": label_schema("user_idx"),
        "item_labels": label_schema("item_idx"),
        "item_embeddings": ITEM_EMBEDDINGS_SCHEMA,
        "label_batches": LEDGER_SCHEMA,
        "personas": gplr.PERSONAS_SCHEMA + ", percentile double",
        "gplr_runs": DOCUMENTED_COLUMNS["gplr_runs"] + "".join(f", {n} {t}" for n, t in audit.RUN_COLUMNS.items()),
        "persona_audit": audit.AUDIT_SCHEMA,
        "persona_history": ", ".join(refresh.HISTORY_COLUMNS),
        "recommend_runs": RECOMMEND_RUNS_SCHEMA + ", run_ts timestamp",
        "cold_start_recs": RECS_SCHEMA,
    }
    return {**DOCUMENTED_COLUMNS, **from_code}


def tables_reference() -> str:
    """docs/reference/tables.md: every table of ``persona_spark.tables``, the stage writing it, what a row is."""
    from persona_spark import tables

    columns = table_columns()
    lines = ["# Tables", "",
             "Generated from the registry in `persona_spark/tables/__init__.py` and the schemas of the code that "
             "writes each table (`python docs/gen_reference.py`). Tables live under `tables.root` (Delta locations) "
             "or, in catalog mode, as `catalog.schema.name`; see [storage](../guides/object-storage.md).", "",
             "| table | written by | what a row is |", "|---|---|---|"]
    for info in tables.TABLES.values():
        by = info.written_by if info.written_by == "input" else f"[`{info.written_by}`](cli.md#{info.written_by})"
        lines.append(f"| [`{info.name}`](#{info.name}) | {by} | {_one_line(info.description)} |")
    for info in tables.TABLES.values():
        writer = "an input the user provides" if info.written_by == "input" else f"written by `{info.written_by}`"
        lines += ["", f"## `{info.name}`", "", f"{writer[0].upper()}{writer[1:]}: {info.description}.", "",
                  "| column | type |", "|---|---|"]
        lines += [f"| `{name}` | {kind} |" for name, kind in _split_columns(columns[info.name])]
        if info.name == tables.QUARANTINE:
            lines += _quarantine_reasons()
    return "\n".join(lines) + "\n"


def _quarantine_reasons() -> list[str]:
    """The ``reason`` values of ``quarantine``, in the order ingest checks them, with what each means."""
    from persona_spark import ingest

    return ["", "`reason` is the first of these that applies to the line, checked in this order:", "",
            "| reason | meaning |", "|---|---|",
            *[f"| `{name}` | {_one_line(meaning)} |" for name, meaning in ingest.REASONS.items()]]


def _split_columns(ddl: str) -> list[tuple[str, str]]:
    """``"a int, b array<struct<x, y>>"`` -> [("a", "int"), ("b", "array<struct<x, y>>")]: commas inside <> stay."""
    parts, depth, current = [], 0, ""
    for char in ddl:
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    out = []
    for part in parts:
        name, _, kind = part.partition(" ")
        out.append((name, kind.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")))
    return out


if __name__ == "__main__":
    sys.exit(main())
