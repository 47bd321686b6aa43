"""Generated CSV batches for the ingest fuzz tests, and an oracle: what ingest must make of each line.

A batch is many lines written as one CSV file (one Spark job reads them all). Each line is drawn from values a
careless or hostile export contains: numbers of every spelling (huge, fractional, exponents, NaN, infinities),
null markers, quotes, commas and line breaks inside fields, bytes that are not valid UTF-8, lines with too few or
too many fields, exact duplicates. The oracle is written from the reasons' documentation (docs/reference/
tables.md), with Python's exact ``Fraction`` for numbers, independently of persona_spark/ingest.py's Spark code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from hypothesis import strategies as st

HEADER = ["customer_id", "order_id", "item_id", "item_name", "quantity", "unit_price", "ts"]
MAX_QUANTITY, MAX_UNIT_PRICE = 10**9, 1e12
NULL_MARKERS = {"null", "none", "nan", "n/a", "\\n"}
# What Spark reads as NaN or an infinity (its special literals, any case, and Java's own spellings).
SPECIAL = ["NaN", "nan", "NAN", "Infinity", "-Infinity", "+Infinity", "inf", "-inf", "+INF", "infinity", "-NaN"]
GARBAGE = ["many", "1,5", "5d", "2.5f", "0x1p3", "1e", "--1", "+-1", "1..2", ".", "e5", "1 000", "١٢", "½", "\t7",
           "NaNa", "infinite", "1e5.5", "0b1", "Ⅻ"]
DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # Java reads ASCII digits only
GOOD_TS, BAD_TS = "2024-01-01 10:00:00", "yesterday"


def _decimal_text() -> st.SearchStrategy[str]:
    """Decimal numbers written every way a file writes them: sign, whole and fraction digits, an exponent."""
    digits = st.text("0123456789", max_size=22)
    exponent = st.one_of(st.just(""), st.builds(lambda e, s: f"{e}{s}", st.sampled_from("eE"),
                                                 st.integers(-400, 400).map(lambda n: f"{n:+d}" if n % 3 else str(n))))
    number = st.builds(lambda sign, whole, point, frac, exp: f"{sign}{whole}{point}{frac}{exp}",
                       st.sampled_from(["", "", "-", "+"]), digits, st.sampled_from(["", "."]), digits, exponent)
    return number.filter(lambda t: DECIMAL.fullmatch(t) is not None)


def number_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(1, 50).map(str),  # ordinary quantities and prices: most lines are
        st.integers(-(2**70), 2**70).map(str),
        st.sampled_from(["0", "-0", "1e20", "1e308", "9223372036854775807", "1000000000", "1000000001", "2.0",
                         "2.7", "0.5", "1e3", "500e-2", "2.0000000000000000001", "1e-400", "1e400", "0.000", ".5",
                         "5.", "1E+3", "1000000000000", "1000000000000.5", "0.01"]),
        _decimal_text(), st.sampled_from(SPECIAL), st.sampled_from(GARBAGE), st.just(""),
    )


def text_value() -> st.SearchStrategy[str]:
    """Ids and product names: plain, null markers, spaces, quotes, commas, line breaks, any Unicode."""
    odd = st.sampled_from(["NULL", "null", "None", "NaN", "n/a", "N/A", "\\N", "", "  ", " c1 ", '"quoted"', 'say "hi"',
                           "a,b", "two\nlines", "two\r\nlines", '"\nopen', "Crème brûlée", "寿司", "13607.0",
                           "nullable", "\ufffd"])
    unicode = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=10)
    return st.one_of(st.sampled_from(["c1", "c2", "Mug", "Pan", "A1"]), odd, unicode)


def clean_text() -> st.SearchStrategy[str]:
    """Ids and names a good line has, quotes, commas and line breaks inside included (CSV quoting carries them)."""
    words = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=10).filter(
        lambda t: t.strip(" ") and t.strip(" ").lower() not in NULL_MARKERS and "\ufffd" not in t and t[0] != '"')
    return st.one_of(st.sampled_from(["c1", "c2", "Mug", "13607.0", 'say "hi"', "a,b", "two\nlines", "Crème brûlée",
                                      "寿司", " padded "]), words)


def clean_number() -> st.SearchStrategy[str]:
    """Quantities and prices a good line has: whole, positive, in range, however they are spelled."""
    return st.one_of(st.integers(1, MAX_QUANTITY).map(str), st.integers(1, 99).map(lambda n: f"{n}.0"),
                     st.sampled_from(["+3", "5e2", "500e-2", "1E+3", "007", "1000000000"]))


def clean_price() -> st.SearchStrategy[str]:
    return st.builds(lambda whole, cents: f"{whole}.{cents:02d}", st.integers(0, 10**6), st.integers(1, 99))


@dataclass(frozen=True)
class Line:
    fields: tuple[str, ...]  # customer_id .. ts as text
    bad_bytes: int  # -1: none; else the field that gets a byte that is never valid UTF-8 appended
    shape: str  # "ok", "short" (a field missing) or "long" (an extra field)


@st.composite
def lines(draw, count: int) -> list[Line]:
    """``count`` lines; each field is a good one most of the time, so that many lines are kept and checked."""
    def pick(clean, messy):
        return draw(clean if draw(st.integers(0, 6)) else messy)

    out = []
    for i in range(count):
        if out and draw(st.integers(0, 14)) == 0:  # an exact copy of an earlier line
            out.append(out[draw(st.integers(0, len(out) - 1))])
            continue
        fields = (pick(clean_text(), text_value()), f"o{i}", pick(clean_text(), text_value()),
                  pick(clean_text(), text_value()), pick(clean_number(), number_text()),
                  pick(st.one_of(clean_number(), clean_price()), number_text()),
                  draw(st.sampled_from([GOOD_TS, GOOD_TS, "", BAD_TS])))
        bad = draw(st.sampled_from([-1] * 20 + [0, 2, 3, 4]))
        shape = draw(st.sampled_from(["ok"] * 25 + ["short", "long"]))
        out.append(Line(fields, bad, shape))
    return out


def _field_bytes(text: str, encoding: str, bad: bool) -> bytes:
    data = text.encode("utf-8") if encoding == "utf-8" else text.encode(encoding, errors="replace")
    return data + b"\xff" if bad else data


def _csv_field(data: bytes) -> bytes:
    if any(c in data for c in b',"\r\n') or data[:1] == b" ":
        return b'"' + data.replace(b'"', b'""') + b'"'
    return data


def to_csv(batch: list[Line], encoding: str) -> bytes:
    out = [",".join(HEADER).encode()]
    for line in batch:
        cells = [_csv_field(_field_bytes(text, encoding, line.bad_bytes == k)) for k, text in enumerate(line.fields)]
        if line.shape == "short":
            cells = cells[:-1]
        elif line.shape == "long":
            cells = [*cells, b"extra"]
        out.append(b",".join(cells))
    return b"\n".join(out) + b"\n"


def decoded(line: Line, encoding: str) -> list[str]:
    """The fields as a reader decoding ``encoding`` sees them (invalid bytes as U+FFFD)."""
    fields = [_field_bytes(text, encoding, line.bad_bytes == k).decode(encoding, errors="replace")
              for k, text in enumerate(line.fields)]
    return fields[:-1] + [None] if line.shape == "short" else fields


def _trimmed(value: str | None) -> str | None:
    value = None if value is None else value.strip(" ")
    return value or None


def _number_reason(text: str | None, kind: str) -> str | None:
    if text is None:
        return "unparseable_quantity" if kind == "quantity" else None
    if not DECIMAL.fullmatch(text):
        special = text.lower() in {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan"} or \
            re.fullmatch(r"[+-]?(NaN|Infinity)", text)
        if kind == "quantity":
            return "non_finite_quantity" if special else "unparseable_quantity"
        return "non_finite_price" if special else "unparseable_unit_price"
    value = Fraction(text)
    if kind == "quantity":
        if value <= 0:
            return "non_positive_quantity"
        if float(text) > MAX_QUANTITY:  # the text as a double, as the order of the reasons reads it
            return "quantity_out_of_range"
        return "fractional_quantity" if value.denominator != 1 else None
    if value <= 0:
        return "non_positive_price"
    return "price_out_of_range" if float(text) > MAX_UNIT_PRICE or float(text) == 0 else None


def expected_reason(line: Line, encoding: str) -> str | None:
    """The first reason (docs/reference/tables.md's order) that applies to the line, before duplicates."""
    raw = decoded(line, encoding)
    if any(v is not None and v.startswith('"') and re.search(r"[\r\n]", v) for v in raw):
        return "unclosed_quote"
    if line.shape != "ok":
        return "malformed_line"
    fields = dict(zip(HEADER, [_trimmed(v) for v in raw]))
    for column in ("customer_id", "order_id", "item_id", "item_name"):
        if fields[column] is None or fields[column].lower() in NULL_MARKERS:
            return f"missing_{column}"
    if any(v is not None and "\ufffd" in v for v in fields.values()):
        return "invalid_encoding"
    reason = _number_reason(fields["quantity"], "quantity") or _number_reason(fields["unit_price"], "price")
    if reason:
        return reason
    return "unparseable_timestamp" if fields["ts"] == BAD_TS else None


def kept_values(line: Line, encoding: str) -> dict:
    """What ``transactions`` must hold for a kept line: the source's values exactly."""
    fields = dict(zip(HEADER, [_trimmed(v) for v in decoded(line, encoding)]))
    price = fields["unit_price"]
    return {"customer_id": fields["customer_id"], "item_id": fields["item_id"], "item_name": fields["item_name"],
            "quantity": int(Fraction(fields["quantity"])), "unit_price": None if price is None else float(price)}
