"""Audience queries: a malformed query names the token and position that break it."""

from __future__ import annotations

import pytest

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
