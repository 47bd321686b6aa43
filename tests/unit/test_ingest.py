"""Ingestion's column mapping is checked before any line is read."""

from __future__ import annotations

import pytest

from persona_spark import ingest


def test_unknown_mapping_target_is_rejected():
    with pytest.raises(ValueError, match="unknown canonical columns \\['colour'\\]"):
        ingest.resolve_mapping("canonical", {"colour": "Colour"})
