"""Audience queries: a malformed query names the token and position that break it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona_spark import audience as audience_lib
from persona_spark.personas import PersonaSet

PERSONAS = PersonaSet(("Pet Lover", "Bargain Hunter", "Home Chef"), ("pets", "deals", "cooks"), "refresh_shop")


@pytest.mark.parametrize("query, message", [
    ("Pet Lover & !Bargian Hunter", "unknown persona 'Bargian Hunter' at position 13"),
    ("Pet Lover &", "the query ends after '&'"),
    ("(Pet Lover | Home Chef", "'(' at position 0 is never closed"),
    ("Pet Lover )", "unexpected ')' at position 10"),
    ("| Home Chef", "expected a persona name, '!' or '(' at position 0, found '|'"),
    ("Pet Lover & \"Home Chef", "unterminated quote at position 12"),
    ("   ", "empty query"),
])
def test_bad_queries_name_the_token(query, message):
    with pytest.raises(audience_lib.AudienceQueryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        audience_lib.parse(query, PERSONAS)


@pytest.mark.parametrize("query", ["!" * 3000 + "Pet Lover", "(" * 3000 + "Pet Lover" + ")" * 3000,
                                   "!(" * 1500 + "Pet Lover" + ")" * 1500])
def test_a_query_nested_too_deep_is_one_short_error(query):
    with pytest.raises(audience_lib.AudienceQueryError, match=f"nests deeper than {audience_lib.MAX_DEPTH} levels") as e:
        audience_lib.parse(query, PERSONAS)
    assert len(str(e.value)) < 400 and "\n" not in str(e.value)


def test_nesting_up_to_the_limit_parses():
    depth = audience_lib.MAX_DEPTH
    assert audience_lib.parse("(" * depth + "Home Chef" + ")" * depth, PERSONAS) == ("persona", 2, "Home Chef")
    assert audience_lib.parse("!" * depth + "Home Chef", PERSONAS)[0] == "not"


def test_a_name_with_double_quotes_is_written_with_them_doubled():
    odd = PersonaSet(('Say "Cheese" Fan', "Pet Lover"), ("", ""), "odd")
    assert audience_lib.parse('"Say ""Cheese"" Fan" & !Pet Lover', odd) == \
        ("and", [("persona", 0, 'Say "Cheese" Fan'), ("not", ("persona", 1, "Pet Lover"))])
    with pytest.raises(audience_lib.AudienceQueryError, match="unterminated quote at position 0"):
        audience_lib.parse('"Say ""Cheese', odd)


# The fuzz: any text is a tree or a one-line AudienceQueryError, never another exception; and any tree, written
# out with every name quoted and every operand group in parentheses, parses back to itself.
NAMES = ("Pet Lover", 'Say "Cheese" Fan', "A & B (odd) | !name", "Home Chef")
FUZZ_SET = PersonaSet(NAMES, ("",) * len(NAMES), "fuzz")
ALPHABET = st.sampled_from(list('&|!()" ') + ["Pet Lover", "Home Chef", "Nobody", '""', "\n", "é", "\x00"])


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.one_of(st.lists(ALPHABET, max_size=40).map("".join), st.text(max_size=40)))
def test_any_text_parses_or_is_an_audience_query_error(query):
    try:
        audience_lib.parse(query, FUZZ_SET)
    except audience_lib.AudienceQueryError as error:
        assert "\n" not in str(error)  # one line: the query and its tokens are quoted with escapes


def _trees():
    leaf = st.integers(0, len(NAMES) - 1).map(lambda i: ("persona", i, NAMES[i]))
    return st.recursive(leaf, lambda inner: st.one_of(
        inner.map(lambda node: ("not", node)),
        st.tuples(st.sampled_from(["and", "or"]), st.lists(inner, min_size=2, max_size=4)).map(list).map(tuple)),
        max_leaves=12)


def _written(node) -> str:
    if node[0] == "persona":
        return '"' + node[2].replace('"', '""') + '"'
    if node[0] == "not":
        return "!(" + _written(node[1]) + ")"
    return "(" + f" {'&' if node[0] == 'and' else '|'} ".join(_written(n) for n in node[1]) + ")"


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(_trees())
def test_every_tree_written_out_parses_back_to_itself(tree):
    assert audience_lib.parse(_written(tree), FUZZ_SET) == tree
