"""Ingestion: map source columns onto the canonical transaction shape and quarantine bad rows.

Every row ends up in exactly one of two places: ``transactions`` (typed, canonical) or
``quarantine`` (the row as it came, as strings, with the first reason it failed). Nothing is
dropped silently, so the counts always add up to the rows read.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.errors import UserError

# Optional order sequence for sources without absolute dates (Instacart): the order's position in
# the customer's history (1 = first) and the days since the customer's previous order. A preset's
# sequence columns the source does not have stay empty; an explicit mapping to them must exist.
SEQUENCE_COLUMNS = ["order_number", "days_since_prior_order"]
CANONICAL = ["customer_id", "order_id", "item_id", "item_name", "quantity", "unit_price", "ts", *SEQUENCE_COLUMNS]
REQUIRED = ["customer_id", "order_id", "item_id", "item_name", "quantity"]

PRESETS: dict[str, dict[str, str]] = {
    "canonical": {c: c for c in CANONICAL},
    "online_retail": {
        "customer_id": "CustomerID",
        "order_id": "InvoiceNo",
        "item_id": "StockCode",
        "item_name": "Description",
        "quantity": "Quantity",
        "unit_price": "UnitPrice",
        "ts": "InvoiceDate",
    },
    # Order lines joined with products.csv; Instacart has no absolute dates, no prices and no
    # quantities (each line is one product in one order), so quantity is 1, ts and unit_price stay
    # empty and the order sequence stands in for time (RFM recency, robustness periods).
    "instacart": {
        "customer_id": "user_id",
        "order_id": "order_id",
        "item_id": "product_id",
        "item_name": "product_name",
        "order_number": "order_number",
        "days_since_prior_order": "days_since_prior_order",
    },
}
PRESET_CONSTANTS: dict[str, dict[str, str]] = {"instacart": {"quantity": "1"}}

# Checked in this order; a row is quarantined with the first reason that applies.
REASONS = [
    "missing_customer_id",
    "missing_order_id",
    "missing_item_id",
    "missing_item_name",
    "cancellation",
    "unparseable_quantity",
    "non_positive_quantity",
    "unparseable_unit_price",
    "unparseable_timestamp",
    "unparseable_order_number",
    "unparseable_days_since_prior_order",
    "duplicate",
]


def resolve_mapping(preset: str, overrides: dict[str, str]) -> dict[str, str]:
    if preset not in PRESETS:
        raise UserError(f"unknown ingest preset {preset!r}; choose one of {sorted(PRESETS)}")
    mapping = {**PRESETS[preset], **overrides}
    unknown = sorted(set(mapping) - set(CANONICAL))
    if unknown:
        raise UserError(f"ingest.mapping has unknown canonical columns {unknown}; canonical are {CANONICAL}")
    return mapping


def to_canonical_strings(raw: DataFrame, preset: str = "canonical", overrides: dict[str, str] | None = None) -> DataFrame:
    """Rename source columns to canonical names, every value as a trimmed string (or null).

    Fails fast, naming the missing source column and the mapping that expected it.
    """
    overrides = overrides or {}
    mapping = resolve_mapping(preset, overrides)
    mapping = {c: s for c, s in mapping.items()
               if not (c in SEQUENCE_COLUMNS and c not in overrides and s not in raw.columns)}
    constants = PRESET_CONSTANTS.get(preset, {})
    for canonical in REQUIRED:
        if canonical not in mapping and canonical not in constants:
            raise UserError(f"ingest: no source column is mapped to required column {canonical!r} (preset {preset!r})")
    missing = [(c, s) for c, s in mapping.items() if s not in raw.columns]
    if missing:
        detail = ", ".join(f"{src!r} (for {can!r})" for can, src in missing)
        raise UserError(
            f"ingest: source is missing column(s) {detail} expected by preset {preset!r} with "
            f"mapping {mapping}; the source has columns {raw.columns}"
        )
    cols = []
    for canonical in CANONICAL:
        if canonical in mapping:
            value = F.trim(F.col(f"`{mapping[canonical]}`").cast("string"))
            cols.append(F.when(value == "", None).otherwise(value).alias(canonical))
        elif canonical in constants:
            cols.append(F.lit(constants[canonical]).alias(canonical))
        else:
            cols.append(F.lit(None).cast("string").alias(canonical))
    return raw.select(*cols)


def _numeric_id(col: Column) -> Column:
    """'13607.0' -> '13607': ids exported through a float column keep one spelling."""
    return F.regexp_replace(col, r"^(\d+)\.0+$", "$1")


def validate(lines: DataFrame, cancellation_prefix: str | None = None, timestamp_format: str | None = None) -> DataFrame:
    """Canonical string lines -> the same lines plus typed columns and ``reason`` (null = good).

    Exact duplicate lines keep their first occurrence (by all columns) and quarantine the rest.
    """
    quantity = F.col("quantity").try_cast("double")
    price = F.col("unit_price").try_cast("double")
    ts = F.try_to_timestamp(F.col("ts"), F.lit(timestamp_format)) if timestamp_format else F.col("ts").try_cast("timestamp")
    order_number = F.col("order_number").try_cast("double")
    days_since_prior = F.col("days_since_prior_order").try_cast("double")
    is_cancellation = F.col("order_id").startswith(cancellation_prefix) if cancellation_prefix else F.lit(False)
    line_key = [F.coalesce(F.col(c), F.lit("\u0000")) for c in CANONICAL]
    occurrence = F.row_number().over(Window.partitionBy(*line_key).orderBy(F.lit(1)))
    checks = [
        ("missing_customer_id", F.col("customer_id").isNull()),
        ("missing_order_id", F.col("order_id").isNull()),
        ("missing_item_id", F.col("item_id").isNull()),
        ("missing_item_name", F.col("item_name").isNull()),
        ("cancellation", is_cancellation),
        ("unparseable_quantity", quantity.isNull()),
        ("non_positive_quantity", quantity <= 0),
        ("unparseable_unit_price", F.col("unit_price").isNotNull() & price.isNull()),
        ("unparseable_timestamp", F.col("ts").isNotNull() & ts.isNull()),
        ("unparseable_order_number", F.col("order_number").isNotNull() & (order_number.isNull() | (order_number < 1))),
        ("unparseable_days_since_prior_order",
         F.col("days_since_prior_order").isNotNull() & (days_since_prior.isNull() | (days_since_prior < 0))),
        ("duplicate", F.col("_occurrence") > 1),
    ]
    reason = F.lit(None).cast("string")
    for name, failed in reversed(checks):
        reason = F.when(failed, F.lit(name)).otherwise(reason)
    return (
        lines.withColumn("_occurrence", occurrence)
        .withColumn("reason", reason)
        .withColumn("_quantity", quantity)
        .withColumn("_unit_price", price)
        .withColumn("_ts", ts)
        .withColumn("_order_number", order_number.cast("long"))
        .withColumn("_days_since_prior_order", days_since_prior)
        .drop("_occurrence")
    )


def good_rows(validated: DataFrame) -> DataFrame:
    """The canonical, typed ``transactions`` rows."""
    return validated.filter(F.col("reason").isNull()).select(
        _numeric_id(F.col("customer_id")).alias("customer_id"),
        "order_id",
        _numeric_id(F.col("item_id")).alias("item_id"),
        "item_name",
        F.col("_quantity").cast("long").alias("quantity"),
        F.col("_unit_price").alias("unit_price"),
        F.col("_ts").alias("ts"),
        F.col("_order_number").alias("order_number"),
        F.col("_days_since_prior_order").alias("days_since_prior_order"),
    )


def bad_rows(validated: DataFrame, source: str) -> DataFrame:
    """The ``quarantine`` rows: the line as it came, its reason, where and when it was read."""
    return validated.filter(F.col("reason").isNotNull()).select(
        *CANONICAL, "reason", F.lit(source).alias("source"), F.current_timestamp().alias("ingested_at")
    )


def join_instacart_products(order_lines: DataFrame, products: DataFrame) -> DataFrame:
    """Attach product names to Instacart order lines (lines of unknown products keep a null name)."""
    names = products.select(F.col("product_id").cast("string").alias("_pid"), "product_name")
    return order_lines.join(names, order_lines["product_id"].cast("string") == names["_pid"], "left").drop("_pid")
