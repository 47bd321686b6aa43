"""The refresh record's numpy parts, without Spark: the per-partition (product, persona) buyer counts."""

from __future__ import annotations

import random
from collections import Counter

import pyarrow as pa
import pytest

from persona_spark import refresh


def _batches(purchases, size):
    for start in range(0, len(purchases), size):
        part = purchases[start:start + size]
        yield pa.RecordBatch.from_arrays([pa.array([i for i, _ in part], pa.int32()),
                                          pa.array([h for _, h in part], pa.list_(pa.int32()))], names=["item_idx", "held"])


@pytest.mark.parametrize("dense_cells,flush", [(1 << 24, 1 << 22), (8, 5)])
def test_cell_counts_are_the_purchase_persona_pairs_counted_one_by_one(monkeypatch, dense_cells, flush):
    """Dense and sorted-run counting (tiny limits force many flushes and merges) agree with a Counter."""
    monkeypatch.setattr(refresh, "DENSE_CELLS", dense_cells)
    monkeypatch.setattr(refresh, "FLUSH_CODES", flush)
    rng = random.Random(3)
    n_items, n_personas = 17, 6
    purchases = [(rng.randrange(n_items), rng.sample(range(n_personas), rng.randint(1, 4))) for _ in range(500)]
    purchases.append((3, []))  # a buyer without personas counts nowhere
    expected = Counter((p, i) for i, held in purchases for p in held)
    got = Counter()
    for batch in refresh._count_cells(_batches(purchases, 37), n_personas, n_items):
        for p, i, n in zip(*(batch.column(k).to_pylist() for k in range(3))):
            assert (p, i) not in got  # each cell once per partition
            got[(p, i)] = n
    assert got == expected and sum(got.values()) > 500
