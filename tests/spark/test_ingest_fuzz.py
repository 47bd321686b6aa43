"""Ingest over generated CSV batches: every line read lands in transactions or quarantine, with the reason the
documentation gives, and a kept line's values are its source's exactly.

Each example is one batch of many lines, one CSV file, read and validated in one Spark job. CI runs a few
batches; ``PERSONA_SPARK_FUZZ_EXAMPLES=200`` runs more (``-o log_cli=true --log-cli-level=INFO`` shows the
lines tried and how each was handled).
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from persona_spark import ingest
from persona_spark.config import IngestConf
from persona_spark.stages.sources import _read_csv
from tests.ingest_world import expected_reason, kept_values, lines, to_csv

log = logging.getLogger(__name__)
EXAMPLES = int(os.environ.get("PERSONA_SPARK_FUZZ_EXAMPLES", "12"))


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
@given(st.integers(30, 80).flatmap(lines), st.sampled_from(["utf-8", "utf-8", "latin-1"]))
def test_every_line_lands_once_with_its_reason_and_exact_values(spark, tmp_path_factory, batch, encoding):
    path = tmp_path_factory.mktemp("fuzz") / "lines.csv"
    path.write_bytes(to_csv(batch, encoding))
    validated = ingest.validate(ingest.to_canonical_strings(_read_csv(spark, str(path), IngestConf(encoding=encoding).charset)))
    rows = validated.select(*ingest.CANONICAL, "reason", "_quantity", "_unit_price").collect()

    assert len(rows) == len(batch)  # rows in: one per line written, none split or merged
    got = defaultdict(list)
    for row in rows:
        got[row["order_id"]].append(row)
    sources = defaultdict(list)
    for line in batch:
        sources[line.fields[1]].append(line)
    assert sorted(got) == sorted(sources)
    tally = Counter()
    for order_id, copies in sources.items():
        want = expected_reason(copies[0], encoding)
        reasons = sorted(str(r["reason"]) for r in got[order_id])
        # Exact copies: one is kept where the line is good, the others are duplicates.
        assert reasons == ([want] * len(copies) if want else sorted(["None"] + ["duplicate"] * (len(copies) - 1))), \
            (copies[0], encoding)
        tally.update(reasons)
        if want is None:
            kept = next(r for r in got[order_id] if r["reason"] is None)
            values = {**kept.asDict(), "quantity": kept["_quantity"], "unit_price": kept["_unit_price"]}
            expected = kept_values(copies[0], encoding)
            assert {k: values[k] for k in expected} == expected, (copies[0], encoding)
    log.info("fuzz batch (%s): %d lines, handled %s", encoding, len(batch), dict(tally))
