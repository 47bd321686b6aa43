"""Persona sets R: names + descriptions, versioned by content.

The version is a hash of the names and descriptions, so a label cached under one set is never
mistaken for an answer about an edited set.
"""

from __future__ import annotations

import hashlib
import json
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
    """Read a persona set from YAML/JSON (any location): a list of {name, description[, index]} or {personas: [...]}.

    Anything wrong with the file (missing, not UTF-8, not YAML/JSON, a persona without a text name) is a
    :class:`UserError` that names the file and what is wrong.
    """
    path = str(path)
    data = _parse(path)
    title = posixpath.basename(path).rsplit(".", 1)[0]
    if isinstance(data, dict):
        title = str(data.get("title") or title)
        data = data.get("personas")
    if not isinstance(data, list):
        raise UserError(f"persona set {path}: expected a list of personas or a mapping with a 'personas' list")
    if all(isinstance(p, dict) and "index" in p for p in data):
        if not all(isinstance(p["index"], int) and not isinstance(p["index"], bool) for p in data):
            raise UserError(f"persona set {path}: every 'index' must be a whole number")
        data = sorted(data, key=lambda p: p["index"])
    names, descriptions = [], []
    for pos, entry in enumerate(data):
        names.append(_text(path, pos, entry, "name"))
        descriptions.append(_text(path, pos, entry, "description"))
    try:
        return PersonaSet(tuple(names), tuple(descriptions), title)
    except UserError as error:
        raise UserError(f"persona set {path}: {error}") from None


def _parse(path: str) -> object:
    """The file's YAML or JSON (by its extension), or a UserError naming the file."""
    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise UserError(f"persona set file not found: {path} (the 'personas' setting)") from None
    except UnicodeDecodeError as error:
        raise UserError(f"persona set {path}: not UTF-8 text (byte {error.start})") from None
    try:
        return json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as error:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise UserError(f"persona set {path}: not valid {kind}: {' '.join(str(error).split())}") from None


def _text(path: str, pos: int, entry: object, key: str) -> str:
    """A persona's ``name`` (required, non-empty text) or ``description`` (text, may be missing or null).

    Text only: YAML reads ``name: null`` as None and ``name: 1.10`` as 1.1, and writing either as a name
    would change it without a word; quoting it in the file keeps it as written.
    """
    if not isinstance(entry, dict):
        raise UserError(f"persona set {path}: persona #{pos} is not a mapping with a 'name' (got {entry!r})")
    value = entry.get(key)
    if key == "description" and value is None:
        return ""
    if not isinstance(value, str):
        got = "nothing" if value is None else f"{value!r}, not text: quote it"
        raise UserError(f"persona set {path}: persona #{pos} has no {key!r} ({got})")
    if key == "name" and not value.strip():
        raise UserError(f"persona set {path}: persona #{pos} has an empty 'name'")
    return value.strip()
