"""Synthetic purchase data with planted personas: the embedded default and the benchmark source.

Each user gets 1–4 planted personas; most order lines come from the categories those personas
favour, the rest from overall popularity (Zipf over items). Lines are generated inside Spark
tasks (one seeded RNG per user), so tens of millions of lines never pass through the driver.
A small share of dirty lines (no customer, negative quantity, duplicates, cancellations) makes
the demo exercise the quarantine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from persona_spark.config import PACKAGE_ROOT, DemoConf
from persona_spark.personas import PersonaSet

DEMO_CATALOG = PACKAGE_ROOT / "resources" / "demo_catalog.yaml"

RAW_SCHEMA = (
    "customer_id string, order_id string, item_id string, item_name string, "
    "quantity string, unit_price string, ts string"
)


@dataclass(frozen=True)
class Catalog:
    item_ids: list[str]
    names: list[str]
    prices: np.ndarray
    popularity: np.ndarray  # Zipf weights, sum 1
    persona_items: list[np.ndarray]  # item positions favoured by each persona

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame({"item_id": self.item_ids, "item_name": self.names, "unit_price": self.prices})


def build_catalog(personas: PersonaSet, n_items: int, zipf_exponent: float, seed: int,
                  catalog_path: Path = DEMO_CATALOG) -> Catalog:
    """Named products from the catalog file, variants added round-robin until ``n_items``."""
    spec = yaml.safe_load(Path(catalog_path).read_text())
    variants = spec["variants"]
    # Interleave categories so that even a small catalog covers every category.
    lists = [[(cat, name) for name in c["products"]] for cat, c in spec["categories"].items()]
    base = [entry for depth in range(max(map(len, lists))) for entry in (lst[depth] for lst in lists if depth < len(lst))]
    rng = np.random.default_rng(seed)
    names, cats = [], []
    for k in range(n_items):
        cat, name = base[k % len(base)]
        round_ = k // len(base)
        names.append(name if round_ == 0 else f"{variants[(round_ - 1) % len(variants)]} {name}"
                     + (f" {round_ // len(variants) + 1}" if round_ > len(variants) else ""))
        cats.append(cat)
    order = rng.permutation(n_items)
    popularity = 1.0 / np.arange(1, n_items + 1) ** zipf_exponent
    popularity = popularity[np.argsort(order)]
    popularity /= popularity.sum()
    persona_items = []
    for persona in personas.names:
        favoured = {cat for cat, c in spec["categories"].items() if persona in c["personas"]}
        persona_items.append(np.array([k for k, c in enumerate(cats) if c in favoured], dtype=np.int64))
    empty = [p for p, items in zip(personas.names, persona_items) if len(items) == 0]
    if empty:
        raise ValueError(f"catalog {catalog_path} has no category for personas {empty}")
    prices = np.round(rng.lognormal(1.5, 0.7, n_items), 2)
    return Catalog([f"SKU{k:06d}" for k in range(n_items)], names, prices, popularity, persona_items)


def _users_lines(user_ids: np.ndarray, catalog: Catalog, conf: DemoConf, n_personas: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    global_cdf = np.cumsum(catalog.popularity)
    persona_cdfs = [np.cumsum(catalog.popularity[pool]) / catalog.popularity[pool].sum() for pool in catalog.persona_items]
    start = np.datetime64(conf.start_date, "s")
    columns: dict[str, list] = {c.split()[0]: [] for c in RAW_SCHEMA.split(", ")}
    planted = []
    for uid in user_ids:
        rng = np.random.default_rng([conf.seed, int(uid)])
        k = int(rng.integers(conf.personas_per_customer_min, conf.personas_per_customer_max + 1))
        mine = rng.choice(n_personas, size=k, replace=False)
        customer = f"C{uid:07d}"
        planted.extend((customer, int(p)) for p in mine)
        n_orders = 1 + rng.poisson(max(conf.mean_orders_per_user - 1, 0))
        per_order = 1 + rng.poisson(max(conf.mean_lines_per_order - 1, 0), size=n_orders)
        order_of_line = np.repeat(np.arange(n_orders), per_order)
        n = len(order_of_line)
        items = np.minimum(np.searchsorted(global_cdf, rng.random(n)), len(global_cdf) - 1)
        chosen = mine[rng.integers(k, size=n)]
        from_persona = rng.random(n) < conf.persona_purity
        for p in mine:
            lines_p = np.flatnonzero(from_persona & (chosen == p))
            cdf = persona_cdfs[p]
            pos = np.minimum(np.searchsorted(cdf, rng.random(len(lines_p))), len(cdf) - 1)
            items[lines_p] = catalog.persona_items[p][pos]
        order_ts = start + rng.integers(conf.days * 86400, size=n_orders).astype("timedelta64[s]")
        quantity = rng.geometric(0.6, size=n)
        columns["customer_id"].extend([customer] * n)
        columns["order_id"].extend(f"{uid:07d}-{o:03d}" for o in order_of_line)
        columns["item_id"].extend(catalog.item_ids[i] for i in items)
        columns["item_name"].extend(catalog.names[i] for i in items)
        columns["quantity"].extend(str(q) for q in quantity)
        columns["unit_price"].extend(f"{catalog.prices[i]:.2f}" for i in items)
        columns["ts"].extend(str(order_ts[o]).replace("T", " ") for o in order_of_line)
    # A basket lists each product once; repeated draws within an order become one line.
    lines = pd.DataFrame(columns).drop_duplicates(["order_id", "item_id"])
    return lines, pd.DataFrame(planted, columns=["customer_id", "persona_idx"])


def _dirty(frame: pd.DataFrame, share: float, rng: np.random.Generator) -> pd.DataFrame:
    """Blemish a share of lines the way real exports are blemished."""
    n = int(len(frame) * share)
    if n == 0:
        return frame
    picks = rng.choice(len(frame), size=min(4 * n, len(frame)), replace=False)
    frame = frame.copy()
    frame.loc[frame.index[picks[:n]], "customer_id"] = None
    frame.loc[frame.index[picks[n:2 * n]], "quantity"] = "-1"
    frame.loc[frame.index[picks[2 * n:3 * n]], "order_id"] = "C" + frame.loc[frame.index[picks[2 * n:3 * n]], "order_id"]
    return pd.concat([frame, frame.iloc[picks[3 * n:4 * n]]], ignore_index=True)


def generate(spark: SparkSession, personas: PersonaSet, conf: DemoConf) -> tuple[DataFrame, DataFrame, pd.DataFrame]:
    """Returns (raw transaction lines as strings, planted_personas, the catalog as pandas)."""
    catalog = build_catalog(personas, conf.items, conf.zipf_exponent, conf.seed)
    n_personas = len(personas)
    # The catalog (hundreds of items) travels in the closure: no SparkContext broadcast, so a
    # Spark Connect session runs this as well.

    def lines_of(batches):
        for batch in batches:
            frame, _ = _users_lines(batch["id"].to_numpy(), catalog, conf, n_personas)
            rng = np.random.default_rng([conf.seed, int(batch["id"].iloc[0]) if len(batch) else 0, 1])
            yield _dirty(frame, conf.dirty_share, rng)

    def planted_of(batches):
        for batch in batches:
            yield _users_lines(batch["id"].to_numpy(), catalog, _planted_only(conf), n_personas)[1]

    ids = spark.range(0, conf.users, numPartitions=conf.partitions)
    raw = ids.mapInPandas(lines_of, RAW_SCHEMA)
    planted = ids.mapInPandas(planted_of, "customer_id string, persona_idx long").withColumn(
        "persona_idx", F.col("persona_idx").cast("int")
    )
    return raw, planted, catalog.to_pandas()


def _planted_only(conf: DemoConf) -> DemoConf:
    """Same RNG stream for the personas, no lines: the planted table without regenerating orders."""
    return conf.model_copy(update={"mean_orders_per_user": 0.0, "mean_lines_per_order": 0.0})
