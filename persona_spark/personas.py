"""Persona sets R: names + descriptions, versioned by content.

The version is a hash of the names and descriptions, so a label cached under one set is never
mistaken for an answer about an edited set.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from persona_spark.errors import UserError
from persona_spark.tables import storage

UNREPRESENTABLE = "Unrepresentable"


def normalize_name(name: str) -> str:
    """Case- and whitespace-insensitive form used for the second matching attempt."""
    return re.sub(r"\s+", " ", name).strip().casefold()


@dataclass(frozen=True)
class PersonaSet:
    names: tuple[str, ...]
    descriptions: tuple[str, ...]
    title: str = "personas"

    def __post_init__(self) -> None:
        if not self.names:
            raise UserError("a persona set needs at least one persona")
        if len(self.names) != len(self.descriptions):
            raise UserError("every persona needs a description (may be empty)")
        normalized = [normalize_name(n) for n in self.names]
        duplicates = sorted({n for n in normalized if normalized.count(n) > 1})
        if duplicates:
            raise UserError(f"persona names must be unique ignoring case/spaces; repeated: {duplicates}")
        if normalize_name(UNREPRESENTABLE) in normalized:
            raise UserError(f"{UNREPRESENTABLE!r} is reserved for users no persona fits")

    def __len__(self) -> int:
        return len(self.names)

    @property
    def version(self) -> str:
        payload = json.dumps([self.names, self.descriptions], ensure_ascii=False)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def index_of(self, name: str) -> int:
        """Exact match first, then case/space-normalized; anything else is an error, never a guess."""
        if name in self.names:
            return self.names.index(name)
        wanted = normalize_name(name)
        for idx, candidate in enumerate(self.names):
            if normalize_name(candidate) == wanted:
                return idx
        raise KeyError(f"persona {name!r} is not in persona set {self.title!r} (version {self.version})")

    def to_dataframe(self, spark):
        rows = [(i, n, d, self.version) for i, (n, d) in enumerate(zip(self.names, self.descriptions))]
        return spark.createDataFrame(rows, "persona_idx int, name string, description string, version string")


def load_persona_set(path: str | Path) -> PersonaSet:
    """Read a persona set from YAML/JSON (any location): a list of {name, description[, index]} or {personas: [...]}."""
    path = str(path)
    text = storage.read_text(path)
    stem, suffix = os.path.splitext(posixpath.basename(path))
    data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    title = stem
    if isinstance(data, dict):
        title = data.get("title", title)
        data = data.get("personas")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of personas or a mapping with a 'personas' list")
    if all(isinstance(p, dict) and "index" in p for p in data):
        data = sorted(data, key=lambda p: p["index"])
    names, descriptions = [], []
    for pos, entry in enumerate(data):
        if not isinstance(entry, dict) or not str(entry.get("name", "")).strip():
            raise UserError(f"{path}: persona #{pos} has no 'name'")
        names.append(str(entry["name"]).strip())
        descriptions.append(str(entry.get("description") or "").strip())
    return PersonaSet(tuple(names), tuple(descriptions), title)
