"""Prompts: history serialization, versioned templates, and strict validation of the answers.

Everything here is plain Python (no Spark) so executors, the driver and tests share one code path.
Product names are untrusted text: they are cleaned, bounded and wrapped in ``<user id="…">`` blocks
that the system prompt declares to be data, and whatever the model answers is only accepted when it
names personas of the set — an injected "answer X" can at worst produce an error row.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

import yaml

from persona_spark.personas import UNREPRESENTABLE, PersonaSet, normalize_name

PROMPTS_DIR = Path(__file__).resolve().parents[1] / "resources" / "prompts"
CHARS_PER_TOKEN = 4  # rough tokens-per-character of English text; no tokenizer needed for budgets
MAX_ERROR_CHARS = 500


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def sanitize_name(name: str | None, max_chars: int) -> str:
    """Make an untrusted product name safe to quote: no control/format characters, no tag or quote
    characters that could close the data block, whitespace collapsed, length bounded."""
    text = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in (name or ""))
    text = text.replace('"', "'").replace("<", "(").replace(">", ")")
    text = " ".join(text.split())
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text or "(unnamed product)"


def load_template_file(name_or_path: str) -> tuple[dict, str]:
    """A template by name (``resources/prompts/<name>.yaml``) or path; returns (fields, version).

    The version is the template name plus a hash of the file's bytes, so any edit of the wording
    yields a new version and never reuses answers given to the old text."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"prompt template {name_or_path!r} not found (looked at {path}; bundled: {known})")
    raw = path.read_bytes()
    fields = yaml.safe_load(raw)
    if not isinstance(fields, dict) or "name" not in fields or "system" not in fields:
        raise ValueError(f"prompt template {path}: needs at least 'name' and 'system'")
    return fields, f"{fields['name']}-{hashlib.sha256(raw).hexdigest()[:8]}"


@dataclass(frozen=True)
class Entity:
    """One user (or item) to label: its id and purchased products, most frequent first."""

    id: int | str
    products: tuple[tuple[str, int], ...]  # (name, times bought)
    history_hash: str


@dataclass(frozen=True)
class Verdict:
    personas: tuple[str, ...]
    persona_idx: tuple[int, ...]
    status: str  # ok | unrepresentable | error
    error: str | None


def error_verdict(message: str) -> Verdict:
    return Verdict((), (), "error", message[:MAX_ERROR_CHARS])


HISTORY_ORDERS = ("frequency", "first_purchase")
HISTORY_COUNTS = ("n", "quantity")


class HistoryFormat:
    """The serialization of a purchase history, bounded by a token budget.

    A template declares how a history is written: ``history`` / ``product`` / ``truncated``
    texts, ``product_separator`` (default "; "), which number stands after a product
    (``count``: ``n`` = orders it was in, ``quantity`` = units bought) and in which order the
    products come (``order``: ``frequency`` = most bought first, ``first_purchase`` = as first
    bought; ``build_user_histories`` sorts accordingly)."""

    def __init__(self, fields: dict, history_tokens: int, max_name_chars: int):
        self.history = Template(fields["history"])
        self.product = Template(fields["product"])
        self.truncated = Template(fields.get("truncated", ""))
        self.separator = fields.get("product_separator", "; ")
        self.tag = fields.get("entity", "user")
        self.count = fields.get("count", "n")
        self.order = fields.get("order", "frequency")
        if self.count not in HISTORY_COUNTS or self.order not in HISTORY_ORDERS:
            raise ValueError(f"prompt template {fields.get('name')!r}: count must be one of {HISTORY_COUNTS} "
                             f"and order one of {HISTORY_ORDERS}, got {self.count!r} / {self.order!r}")
        self.history_tokens = history_tokens
        self.max_name_chars = max_name_chars

    def entity_of(self, entity_id: int, history, history_hash: str) -> Entity:
        """A request row's ``history`` (structs with name, n, quantity) as the entity this format writes."""
        count = (lambda p: max(int(p["quantity"] or 0), 1)) if self.count == "quantity" else (lambda p: int(p["n"]))
        return Entity(entity_id, tuple((p["name"], count(p)) for p in history), history_hash)

    def text(self, entity: Entity) -> str:
        """Products in the history's order, as many as fit the budget; a cut history says so."""
        n_unique = len(entity.products)
        parts: list[str] = []
        used = estimate_tokens(self.history.substitute(id=entity.id, n_unique=n_unique, products=""))
        for name, count in entity.products:
            part = self.product.substitute(name=sanitize_name(name, self.max_name_chars), count=count, times="time" if count == 1 else "times")
            cost = estimate_tokens(part) + 1
            if parts and used + cost > self.history_tokens:
                break
            parts.append(part)
            used += cost
        text = self.history.substitute(id=entity.id, n_unique=n_unique, products=self.separator.join(parts))
        if len(parts) < n_unique:
            text += self.truncated.substitute(shown=len(parts), n_unique=n_unique)
        return text

    def block(self, entity: Entity) -> str:
        """The history inside the data block the system prompt tells the model not to obey."""
        return f'<{self.tag} id="{entity.id}">\n{self.text(entity)}\n</{self.tag}>'


class LabelPrompt:
    """A user/item labeling template bound to a persona set and the serialization limits.

    Two layouts. By default (``user_v1``) the system prompt holds the rules and the persona list,
    histories come as ``<user id>`` data blocks followed by ``request``, few-shot ``examples`` are
    chat turns, and answers are ``{"personas": [...]}`` (or ``{"answers": [...]}`` for several
    users). A template with a ``user`` text (``paper_v1``) writes one user message from it
    instead — ``$persona_list``, ``$history``, ``$id``, ``$max_personas``, ``$n_personas`` —
    one user per request, examples inside that text; ``answer: keyed`` expects
    ``{"<id>": [...]}``. Either way only names of the persona set are accepted.
    """

    def __init__(self, template: str, persona_set: PersonaSet, max_personas: int, history_tokens: int, max_name_chars: int):
        self.fields, template_version = load_template_file(template)
        self.persona_set = persona_set
        self.max_personas = max_personas
        self.format = HistoryFormat(self.fields, history_tokens, max_name_chars)
        # Limits change the text the model sees, so they are part of the version.
        self.version = f"{template_version}-t{history_tokens}-n{max_name_chars}-k{max_personas}"
        self.inline = "user" in self.fields
        self.keyed = self.fields.get("answer", "personas") == "keyed"
        self.multi = "multi_request" in self.fields
        item = self.fields.get("persona_item")
        entries = [
            Template(item).substitute(number=i + 1, name=n, description=d) if item else (f"- {n}: {d}" if d else f"- {n}")
            for i, (n, d) in enumerate(zip(persona_set.names, persona_set.descriptions))
        ]
        persona_list = self.fields.get("persona_separator", "\n").join(entries)
        self._persona_list = persona_list
        self._system = {
            multi: Template(self.fields["system"]).substitute(
                persona_list=persona_list,
                max_personas=max_personas,
                answer_format=self.fields.get("multi_format" if multi else "single_format", ""),
            ).strip()
            for multi in (False, True)
        }
        self.examples = [ex for ex in self.fields.get("examples") or [] if self._example_fits(ex)]

    def _example_fits(self, example: dict) -> bool:
        for name in example["personas"]:
            if normalize_name(name) == normalize_name(UNREPRESENTABLE):
                continue
            try:
                self.persona_set.index_of(name)
            except KeyError:
                return False
        return True

    def _request(self, entities: Sequence[Entity]) -> str:
        blocks = "\n\n".join(self.format.block(e) for e in entities)
        if len(entities) == 1:
            return f"{blocks}\n\n{self.fields['request']}"
        return f"{blocks}\n\n{Template(self.fields['multi_request']).substitute(count=len(entities))}"

    def _inline_request(self, entity: Entity) -> str:
        return Template(self.fields["user"]).substitute(
            persona_list=self._persona_list, history=self.format.text(entity), id=entity.id,
            max_personas=self.max_personas, n_personas=len(self.persona_set),
        )

    def messages(self, entities: Sequence[Entity]) -> list[dict]:
        """System prompt, few-shot exchanges in the same (single/multi) shape, then the request."""
        multi = len(entities) > 1
        if multi and not self.multi:
            raise ValueError(f"prompt template {self.fields['name']!r} labels one user per request: "
                             "set labeling.openai.users_per_request=1")
        messages = [{"role": "system", "content": self._system[multi]}]
        if self.inline:
            return messages + [{"role": "user", "content": self._inline_request(entities[0])}]
        shots = [
            (Entity(f"example-{i + 1}", tuple((n, c) for n, c in ex["products"]), ""), list(ex["personas"]))
            for i, ex in enumerate(self.examples)
        ]
        if shots and multi:
            messages.append({"role": "user", "content": self._request([e for e, _ in shots])})
            answers = [{"id": str(e.id), "personas": p} for e, p in shots]
            messages.append({"role": "assistant", "content": json.dumps({"answers": answers})})
        else:
            for example, personas in shots:
                messages.append({"role": "user", "content": self._request([example])})
                messages.append({"role": "assistant", "content": json.dumps({"personas": personas})})
        messages.append({"role": "user", "content": self._request(entities)})
        return messages

    def response_format(self, mode: str, multi: bool) -> dict | None:
        """JSON mode / structured output; the schema restricts names to the set where supported."""
        if mode == "off":
            return None
        if mode == "json_object":
            return {"type": "json_object"}
        if self.keyed:
            raise ValueError(f"prompt template {self.fields['name']!r} answers keyed by user id, which a fixed "
                             "JSON schema cannot describe: use labeling.openai.json_mode=json_object or off")
        names = {"type": "array", "items": {"type": "string", "enum": [*self.persona_set.names, UNREPRESENTABLE]}}
        single = {"type": "object", "properties": {"personas": names}, "required": ["personas"], "additionalProperties": False}
        if multi:
            entry = {
                "type": "object",
                "properties": {"id": {"type": "string"}, "personas": names},
                "required": ["id", "personas"],
                "additionalProperties": False,
            }
            schema = {"type": "object", "properties": {"answers": {"type": "array", "items": entry}}, "required": ["answers"], "additionalProperties": False}
        else:
            schema = single
        return {"type": "json_schema", "json_schema": {"name": "personas", "strict": True, "schema": schema}}

    # ---- validation ------------------------------------------------------------------------
    def parse(self, content: str | None, ids: Sequence[int]) -> dict[int, Verdict]:
        """Validate an answer for ``ids``: one verdict per id, errors recorded, nothing guessed."""
        if self.keyed:
            try:
                per_id = keyed_answers(content or "")
            except ValueError as exc:
                return {i: error_verdict(str(exc)) for i in ids}
            return self._verdicts(per_id, ids)
        try:
            data = json.loads(strip_code_fence(content or ""))
        except json.JSONDecodeError:
            snippet = (content or "")[:120]
            return {i: error_verdict(f"answer is not valid JSON: {snippet!r}") for i in ids}
        per_id: dict[str, object] = {}
        if isinstance(data, dict) and isinstance(data.get("answers"), list):
            duplicated = set()
            for entry in data["answers"]:
                if isinstance(entry, dict) and "id" in entry:
                    key = str(entry["id"]).strip()
                    if key in per_id:
                        duplicated.add(key)
                    per_id[key] = entry.get("personas")
            for key in duplicated:
                per_id[key] = "answered more than once"
        elif len(ids) == 1 and isinstance(data, dict) and "personas" in data:
            per_id[str(ids[0])] = data["personas"]
        elif len(ids) == 1 and isinstance(data, list):
            per_id[str(ids[0])] = data
        else:
            shape = "an 'answers' list" if len(ids) > 1 else "a 'personas' list"
            return {i: error_verdict(f"answer JSON has no {shape}: {json.dumps(data)[:120]}") for i in ids}
        return self._verdicts(per_id, ids)

    def _verdicts(self, per_id: dict[str, object], ids: Sequence[int]) -> dict[int, Verdict]:
        verdicts = {}
        for i in ids:
            names = per_id.get(str(i))
            if names is None:
                verdicts[i] = error_verdict(f"the answer has no entry for id {i}")
            elif isinstance(names, str) and names == "answered more than once":
                verdicts[i] = error_verdict(f"the answer has several entries for id {i}")
            else:
                verdicts[i] = self.validate_names(names)
        return verdicts

    def validate_names(self, names: object) -> Verdict:
        """Map answered names onto the set (exact, then case/space-normalized). Unknown names are
        reported, never matched approximately; if some names are valid they are kept."""
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return error_verdict(f"'personas' must be a list of names, got {json.dumps(names)[:120]}")
        valid: list[str] = []
        indices: list[int] = []
        unknown: list[str] = []
        unrepresentable = False
        for name in names:
            if normalize_name(name) == normalize_name(UNREPRESENTABLE):
                unrepresentable = True
                continue
            try:
                idx = self.persona_set.index_of(name)
            except KeyError:
                unknown.append(name[:80])
                continue
            if idx not in indices:
                indices.append(idx)
                valid.append(self.persona_set.names[idx])
        notes = []
        if unknown:
            notes.append(f"unknown persona names ignored: {unknown}")
        if len(valid) > self.max_personas:
            notes.append(f"{len(valid)} personas answered, kept the first {self.max_personas}")
            valid, indices = valid[: self.max_personas], indices[: self.max_personas]
        if valid:
            if unrepresentable:
                notes.append(f"{UNREPRESENTABLE!r} ignored next to valid personas")
            return Verdict(tuple(valid), tuple(indices), "ok", "; ".join(notes)[:MAX_ERROR_CHARS] or None)
        if unrepresentable and not unknown:
            return Verdict((), (), "unrepresentable", None)
        if unknown:
            return error_verdict(f"no persona of the set in the answer; unknown persona names: {unknown}")
        return error_verdict("the answer lists no persona")


def keyed_answers(content: str) -> dict[str, object]:
    """The paper's answer, ``{"<user number>": ["Persona", ...]}`` (Fig. 3.a/3.c): one object, or
    one object per line as its format explanation shows; an id answered twice is marked so."""
    text = strip_code_fence(content)
    try:
        objects = [json.loads(text)]
    except json.JSONDecodeError:
        try:
            objects = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"answer is not valid JSON: {content[:120]!r}") from None
    per_id: dict[str, object] = {}
    for data in objects:
        if not isinstance(data, dict) or not data:
            raise ValueError(f"answer JSON is not an object keyed by user number: {json.dumps(data)[:120]}")
        for key, names in data.items():
            key = str(key).strip()
            per_id[key] = "answered more than once" if key in per_id else names
    return per_id


def strip_code_fence(text: str) -> str:
    """Models sometimes wrap JSON in ```json fences even in JSON mode."""
    match = re.fullmatch(r"\s*```(?:json)?\s*(.*?)\s*```\s*", text, flags=re.S)
    return match.group(1) if match else text
