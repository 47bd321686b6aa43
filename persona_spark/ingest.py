"""Ingestion: map source columns onto the canonical transaction shape and quarantine bad rows.

Every row ends up in exactly one of two places: ``transactions`` (typed, canonical) or
``quarantine`` (the row as it came, as strings, with the first reason it failed). Nothing is
dropped silently, so the counts always add up to the rows read.
"""

from __future__ import annotations

from dataclasses import dataclass

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

# The largest quantity (and order number) kept. build-graph sums a customer's quantities of a product into a
# bigint; at this bound it takes over nine billion lines of one customer and product to overflow 2^63 - 1, and
# every whole number up to it is exact in the double it is parsed through.
MAX_QUANTITY = 10**9
# The largest unit price kept: quantity x price summed over every line of a customer (RFM monetary) stays a
# finite double (1e9 x 1e12 per line leaves some 10^287 lines of headroom), and cents stay visible in the double.
MAX_UNIT_PRICE = 10.0**12

# Every reason a line is quarantined for, and what it means, checked in this order: a line gets the first that
# applies. docs/reference/tables.md lists them from here.
REASONS: dict[str, str] = {
    "malformed_line": "a CSV line that does not split into as many fields as the header has; the line as read is "
                      "in raw_line",
    "unclosed_quote": "a CSV field whose opening quote is not closed where the field ends: the line ends inside "
                      "it, or the reader ran it on past line ends (a value starting with a quote and holding a line "
                      "break), so lines it swallowed are in this line's text (raw_line or a column)",
    "missing_customer_id": "no customer id: empty, or a null marker (`NULL`, `None`, `NaN`, `N/A`, `\\N`, any case)",
    "missing_order_id": "no order id (empty or a null marker)",
    "missing_item_id": "no product id (empty or a null marker)",
    "missing_item_name": "no product name (empty or a null marker): a product without a name cannot be labelled",
    "invalid_encoding": "the text holds bytes that are not valid in ingest.encoding (read as the replacement "
                        "character U+FFFD, so the original bytes are not recoverable from the table)",
    "cancellation": "the order id starts with ingest.cancellation_prefix",
    "unparseable_quantity": "no quantity, or one that is not a decimal number",
    "non_finite_quantity": "a quantity of NaN or infinity",
    "non_positive_quantity": "a quantity of 0 or less",
    "quantity_out_of_range": f"a quantity above {MAX_QUANTITY:,} (sums over lines must stay inside a 64-bit integer)",
    "fractional_quantity": "a quantity that is not a whole number (kept quantities are whole: 2.0 and 2e1 are, "
                           "2.5 is not)",
    "unparseable_unit_price": "a unit price that is not a decimal number (an empty one is kept as unknown)",
    "non_finite_price": "a unit price of NaN or infinity",
    "non_positive_price": "a unit price of 0 or less",
    "price_out_of_range": f"a unit price above {MAX_UNIT_PRICE:,.0f} (quantity x price sums must stay finite), or "
                          "one so small that a double reads it as 0",
    "unparseable_timestamp": "a timestamp that ingest.timestamp_format (or Spark's default parsing) does not read",
    "unparseable_order_number": f"an order number that is not a whole number from 1 to {MAX_QUANTITY:,}",
    "unparseable_days_since_prior_order": "days since the prior order that are not a finite number >= 0",
    "duplicate": "an exact duplicate of an earlier line (by every canonical column): the first is kept",
}

# Texts a source writes for "no value" (SQL NULL, Python None, pandas NaN, Hive \N); matched ignoring case.
# An id or product name spelled like this is missing, not a customer or product of that name.
NULL_MARKERS = ("null", "none", "nan", "n/a", "\\n")
# The Spark CSV reader's column for a line that does not split into the header's fields.
CORRUPT_RECORD = "_corrupt_record"
REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder writes for bytes that are not valid in the source's encoding


def resolve_mapping(preset: str, overrides: dict[str, str]) -> dict[str, str]:
    if preset not in PRESETS:
        raise UserError(f"unknown ingest preset {preset!r}; choose one of {sorted(PRESETS)}")
    mapping = {**PRESETS[preset], **overrides}
    unknown = sorted(set(mapping) - set(CANONICAL))
    if unknown:
        raise UserError(f"ingest.mapping has unknown canonical columns {unknown}; canonical are {CANONICAL}")
    return mapping


def unmapped_columns(columns: list[str], preset: str = "canonical", overrides: dict[str, str] | None = None) -> list[str]:
    """The source's columns no canonical column is mapped to: ingest does not keep them, and says so."""
    used = set(resolve_mapping(preset, overrides or {}).values()) | {CORRUPT_RECORD}
    return [c for c in columns if c not in used]


def to_canonical_strings(raw: DataFrame, preset: str = "canonical", overrides: dict[str, str] | None = None) -> DataFrame:
    """Rename source columns to canonical names, every value as a trimmed string (or null), plus what a CSV
    reader's damage left: ``raw_line`` and ``open_quote`` (see :func:`_csv_damage`).

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
            f"mapping {mapping}; the source has columns {[c for c in raw.columns if c != CORRUPT_RECORD]}"
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
    return raw.select(*cols, *_csv_damage(raw, list(mapping.values())))


def _csv_damage(raw: DataFrame, mapped: list[str]) -> list[Column]:
    """``raw_line`` (the line as read, where it did not split into the header's fields) and ``open_quote``
    (a field's opening quote is not closed where the field ends): facts of a CSV source, which carries the
    reader's corrupt record column; other sources have neither."""
    if CORRUPT_RECORD not in raw.columns:
        return [F.lit(None).cast("string").alias("raw_line"), F.lit(False).alias("open_quote")]
    corrupt = F.col(CORRUPT_RECORD)
    quotes = F.length(corrupt) - F.length(F.regexp_replace(corrupt, '"', ""))
    # A line with an odd number of quotes that does not split into the header's fields ended inside a quoted
    # field. A quote the reader cannot close where its field should end, it reads on past line ends as unquoted
    # text up to the next delimiter, opening quote included: a value that starts with a quote and holds a line
    # break (a quoted field keeps neither its quotes nor, unless it really holds one, a line break).
    left_open = F.coalesce(quotes % 2 == 1, F.lit(False))
    for source in sorted(set(mapped)):
        value = F.col(f"`{source}`").cast("string")
        left_open = left_open | F.coalesce(value.startswith('"') & value.rlike("[\\r\\n]"), F.lit(False))
    return [corrupt.alias("raw_line"), left_open.alias("open_quote")]


def _numeric_id(col: Column) -> Column:
    """'13607.0' -> '13607': ids exported through a float column keep one spelling."""
    return F.regexp_replace(col, r"^(\d+)\.0+$", "$1")


# A decimal number as written: sign, digits with at most one point (a digit somewhere), an optional exponent.
# Java's regular expressions read [0-9] as ASCII digits, as its number parser does.
_DECIMAL = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_INTEGER = r"^[+-]?[0-9]+$"
_FAR = 2**62  # an exponent too long for a bigint: larger than any string's length


@dataclass(frozen=True)
class Number:
    """What a text column says as a number, decided on the text itself so that nothing is rounded first.

    ``written``: a plain decimal number (``12``, ``-0.5``, ``1e20``); ``special``: not one, yet Spark reads it
    as NaN or an infinity (``NaN``, ``Infinity``, ``inf``); ``value``: the nearest double. For written numbers,
    ``positive``: > 0; ``whole``: an integer exactly (``2.0`` and ``5e2`` are, ``2.0000000000000000001`` is not),
    asked only of numbers whose double is finite (a larger exponent is out of any range first).

    Every line runs these, so the common spellings are answered from the double or one pattern, and the
    expressions stay small: Spark compiles a stage's checks into one Java method, and the JVM leaves a method
    over 8,000 bytes of bytecode uncompiled, which makes ingest several times slower.
    """

    text: Column

    @property
    def written(self) -> Column:
        return self.text.rlike(_DECIMAL)

    @property
    def value(self) -> Column:
        return self.text.try_cast("double")

    @property
    def special(self) -> Column:
        return ~self.written & F.coalesce(F.isnan(self.value) | (F.abs(self.value) == F.lit(float("inf"))), F.lit(False))

    @property
    def _mantissa(self) -> Column:
        return F.split(self.text, "[eE]", 2).getItem(0)

    @property
    def positive(self) -> Column:
        # A correctly rounded parse keeps the sign, so a double other than 0 tells; 0 may also be a text too
        # small for a double (1e-400), which its digits tell.
        return (F.when(self.value != 0, self.value > 0)
                .otherwise(~self.text.startswith("-") & self._mantissa.rlike("[1-9]")))

    @property
    def whole(self) -> Column:
        # The mantissa's digits with the point moved by the exponent: an integer when no non-zero digit is
        # left right of it. An exponent too long for a bigint is a large negative one here (a large positive
        # one made the double infinite).
        exponent = F.try_element_at(F.split(self.text, "[eE]", 2), F.lit(2))
        shift = F.when(exponent.isNull(), F.lit(0).cast("long")).otherwise(
            F.coalesce(exponent.try_cast("long"), F.lit(-_FAR)))
        digits = F.regexp_replace(self._mantissa, "[^0-9]", "")
        point = F.length(F.regexp_replace(F.substring_index(self._mantissa, ".", 1), "[^0-9]", ""))
        moved = F.length(F.regexp_replace(digits, "0+$", "")) <= point + shift
        return F.when(self.text.rlike(_INTEGER), F.lit(True)).otherwise(moved)


def _missing(col: Column) -> Column:
    return col.isNull() | F.lower(col).isin(*NULL_MARKERS)


def _quantity_checks(number: Number) -> list[tuple[str, Column]]:
    return [
        ("unparseable_quantity", number.text.isNull() | (~number.written & ~number.special)),
        ("non_finite_quantity", number.special),
        ("non_positive_quantity", ~number.positive),
        ("quantity_out_of_range", number.value > MAX_QUANTITY),
        ("fractional_quantity", ~number.whole),
    ]


def _price_checks(number: Number) -> list[tuple[str, Column]]:
    given = number.text.isNotNull()
    return [
        ("unparseable_unit_price", given & ~number.written & ~number.special),
        ("non_finite_price", given & number.special),
        ("non_positive_price", given & ~number.positive),
        ("price_out_of_range", given & ((number.value > MAX_UNIT_PRICE) | (number.value == 0))),
    ]


def _sequence_checks(order_number: Number, days: Number) -> list[tuple[str, Column]]:
    whole_order = (order_number.written & order_number.positive & (order_number.value <= MAX_QUANTITY)
                   & order_number.whole)
    finite_days = days.written & (days.value >= 0) & (F.abs(days.value) != F.lit(float("inf")))
    return [
        ("unparseable_order_number", order_number.text.isNotNull() & ~whole_order),
        ("unparseable_days_since_prior_order", days.text.isNotNull() & ~finite_days),
    ]


def validate(lines: DataFrame, cancellation_prefix: str | None = None, timestamp_format: str | None = None) -> DataFrame:
    """Canonical string lines -> the same lines plus typed columns and ``reason`` (null = good).

    Exact duplicate lines keep their first occurrence (by all columns) and quarantine the rest. On a kept line
    a typed column equals its text exactly (quantities and order numbers are whole, prices the nearest double);
    on a quarantined one it means nothing (never an error: the casts are ``try_cast``).
    """
    quantity, price = Number(F.col("quantity")), Number(F.col("unit_price"))
    order_number, days = Number(F.col("order_number")), Number(F.col("days_since_prior_order"))
    ts = F.try_to_timestamp(F.col("ts"), F.lit(timestamp_format)) if timestamp_format else F.col("ts").try_cast("timestamp")
    is_cancellation = F.col("order_id").startswith(cancellation_prefix) if cancellation_prefix else F.lit(False)
    occurrence = F.row_number().over(Window.partitionBy(*_line_key()).orderBy(F.lit(1)))
    garbled = F.lit(False)
    for column in CANONICAL:
        garbled = garbled | F.coalesce(F.col(column).contains(REPLACEMENT_CHARACTER), F.lit(False))
    checks = dict([
        ("malformed_line", F.col("raw_line").isNotNull() & ~F.col("open_quote")),
        ("unclosed_quote", F.col("open_quote")),
        *[(f"missing_{column}", _missing(F.col(column))) for column in REQUIRED if column != "quantity"],
        ("invalid_encoding", garbled),
        ("cancellation", is_cancellation),
        *_quantity_checks(quantity),
        *_price_checks(price),
        ("unparseable_timestamp", F.col("ts").isNotNull() & ts.isNull()),
        *_sequence_checks(order_number, days),
        ("duplicate", F.col("_occurrence") > 1),
    ])
    reason = F.lit(None).cast("string")
    for name in reversed(REASONS):  # REASONS is the order; a reason without its check fails here, at once
        reason = F.when(checks[name], F.lit(name)).otherwise(reason)
    return (
        lines.withColumn("_occurrence", occurrence)
        .withColumn("reason", reason)
        .withColumn("_quantity", quantity.value.try_cast("long"))
        .withColumn("_unit_price", price.value)
        .withColumn("_ts", ts)
        .withColumn("_order_number", order_number.value.try_cast("long"))
        .withColumn("_days_since_prior_order", days.value)
        .drop("_occurrence", "open_quote")
    )


def _line_key() -> list[Column]:
    """Every canonical column, a null told apart from any text."""
    return [F.coalesce(F.col(c), F.lit("\u0000")) for c in CANONICAL]


def line_hash() -> Column:
    """A 64-bit hash of a line's canonical text (and raw line): summed over a source, it names the batch."""
    return F.xxhash64(*_line_key(), F.coalesce(F.col("raw_line"), F.lit("\u0000")))


def good_rows(validated: DataFrame, batch_id: str | None = None) -> DataFrame:
    """The canonical, typed ``transactions`` rows; with ``batch_id`` (the table's), tagged with the source batch
    they came in, so that ingesting the same batch again can replace its rows instead of adding them twice."""
    tag = [F.lit(batch_id).alias("batch_id")] if batch_id is not None else []
    return validated.filter(F.col("reason").isNull()).select(
        _numeric_id(F.col("customer_id")).alias("customer_id"),
        "order_id",
        _numeric_id(F.col("item_id")).alias("item_id"),
        "item_name",
        F.col("_quantity").alias("quantity"),
        F.col("_unit_price").alias("unit_price"),
        F.col("_ts").alias("ts"),
        F.col("_order_number").alias("order_number"),
        F.col("_days_since_prior_order").alias("days_since_prior_order"),
        *tag,
    )


def bad_rows(validated: DataFrame, source: str, batch_id: str) -> DataFrame:
    """The ``quarantine`` rows: the line as it came, its reason, where, from which batch and when it was read."""
    return validated.filter(F.col("reason").isNotNull()).select(
        *CANONICAL, "reason", F.lit(source).alias("source"), F.current_timestamp().alias("ingested_at"),
        F.lit(batch_id).alias("batch_id"), "raw_line",
    )


def join_instacart_products(order_lines: DataFrame, products: DataFrame) -> DataFrame:
    """Attach product names to Instacart order lines (lines of unknown products keep a null name)."""
    names = products.select(F.col("product_id").cast("string").alias("_pid"), "product_name")
    return order_lines.join(names, order_lines["product_id"].cast("string") == names["_pid"], "left").drop("_pid")
