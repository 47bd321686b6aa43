"""Audiences: customers picked by a small boolean language over persona names.

``Pet Lover & !Bargain Hunter``, ``(Home Chef | Gardener) & !"Coffee and Tea Connoisseur"``:
``&`` (and) binds tighter than ``|`` (or), ``!`` negates, parentheses group; a name is the text
between operators (spaces inside it are part of it) or anything in double quotes, where ``""`` stands
for one ``"`` (``"Say ""Cheese"" Fan"`` names the persona ``Say "Cheese" Fan``). Names resolve
against the persona set like LLM answers do (exactly, then ignoring case and spacing); an unknown
name or a syntax error is an :class:`AudienceQueryError` that names the token and its position, and so is
a query nested deeper than ``MAX_DEPTH`` (the parser recurses once per ``!`` or ``(``, and Python's stack
is finite).
:func:`build_audiences` puts a run's audiences and their changes together; the audience stage writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from persona_spark.config import AudienceConf, AudienceSpec
from persona_spark.errors import UserError
from persona_spark.explore import persona_sets
from persona_spark.personas import PersonaSet
from persona_spark.runtime.checkpoint import checkpoint
from persona_spark.runtime.runs import latest_runs, utc


class AudienceError(UserError):
    """An audience request that cannot run as given (a UserError: the CLI prints it and exits with status 2)."""


class AudienceQueryError(AudienceError):
    """A query that does not parse, or names a persona the set does not have."""


@dataclass(frozen=True)
class Token:
    kind: str  # '&' '|' '!' '(' ')' or 'name'
    text: str
    position: int  # 0-based character offset in the query


_NAME = re.compile(r'[^&|!()"]+')
# Deep enough for any query a person writes; shallow enough that the parser's recursion (three frames per level)
# stays far inside Python's default limit of 1,000 frames.
MAX_DEPTH = 100
QUERY_SHOWN = 200  # characters of a query an error quotes: it stays one readable line


def _quoted(query: str, at: int) -> tuple[str, int]:
    """The name in the double quotes opening at ``at`` (``""`` inside stands for ``"``), and where it ends."""
    parts, start = [], at + 1
    while True:
        end = query.find('"', start)
        if end < 0:
            raise AudienceQueryError(f"unterminated quote at position {at} in audience query {query!r}")
        parts.append(query[start:end])
        if not query.startswith('""', end):
            return '"'.join(parts), end + 1
        start = end + 2


def tokenize(query: str) -> list[Token]:
    tokens, at = [], 0
    while True:
        while at < len(query) and query[at].isspace():
            at += 1
        if at >= len(query):
            return tokens
        char = query[at]
        if char in "&|!()":
            tokens.append(Token(char, char, at))
            at += 1
        elif char == '"':
            name, end = _quoted(query, at)
            tokens.append(Token("name", name, at))
            at = end
        else:
            match = _NAME.match(query, at)
            tokens.append(Token("name", match.group().rstrip(), at))
            at = match.end()


# A parsed query: ("persona", index, name) | ("not", node) | ("and", [nodes]) | ("or", [nodes])
Node = tuple


class _Parser:
    def __init__(self, query: str, persona_set: PersonaSet):
        self.query, self.persona_set = query, persona_set
        self.tokens = tokenize(query)
        self.at = 0
        self.depth = 0

    def peek(self) -> Token | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def fail(self, message: str) -> AudienceQueryError:
        shown = self.query if len(self.query) <= QUERY_SHOWN else f"{self.query[:QUERY_SHOWN]}... ({len(self.query)} characters)"
        return AudienceQueryError(f"{message} in audience query {shown!r}")

    def parse(self) -> Node:
        if not self.tokens:
            raise self.fail("empty query: name at least one persona")
        node = self.either()
        extra = self.peek()
        if extra is not None:
            raise self.fail(f"unexpected {extra.text!r} at position {extra.position}")
        return node

    def _chain(self, op: str, kind: str, operand) -> Node:
        nodes = [operand()]
        while (token := self.peek()) is not None and token.kind == op:
            self.at += 1
            nodes.append(operand())
        return nodes[0] if len(nodes) == 1 else (kind, nodes)

    def either(self) -> Node:
        return self._chain("|", "or", self.both)

    def both(self) -> Node:
        return self._chain("&", "and", self.factor)

    def factor(self) -> Node:
        token = self.peek()
        if token is None:
            raise self.fail(f"the query ends after {self.tokens[-1].text!r}: a persona name or '(' is missing")
        self.at += 1
        if token.kind in "!(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.fail(f"{token.text!r} at position {token.position} nests deeper than {MAX_DEPTH} levels")
            node = self.negated() if token.kind == "!" else self.group(token)
            self.depth -= 1
            return node
        if token.kind == "name":
            try:
                return ("persona", self.persona_set.index_of(token.text), token.text)
            except KeyError:
                known = ", ".join(self.persona_set.names)
                raise self.fail(f"unknown persona {token.text!r} at position {token.position} (known: {known})") from None
        raise self.fail(f"expected a persona name, '!' or '(' at position {token.position}, found {token.text!r}")

    def negated(self) -> Node:
        return ("not", self.factor())

    def group(self, opening: Token) -> Node:
        node = self.either()
        closing = self.peek()
        if closing is None or closing.kind != ")":
            found = f"found {closing.text!r} at position {closing.position}" if closing else "the query ends"
            raise self.fail(f"'(' at position {opening.position} is never closed ({found})")
        self.at += 1
        return node


def parse(query: str, persona_set: PersonaSet) -> Node:
    """The query's syntax tree, every name resolved to a persona index (or an AudienceQueryError)."""
    return _Parser(query, persona_set).parse()


def to_column(node: Node, personas: Column) -> Column:
    """A boolean Spark column over ``personas`` (an array of persona indices)."""
    kind = node[0]
    if kind == "persona":
        return F.array_contains(personas, node[1])
    if kind == "not":
        return ~to_column(node[1], personas)
    parts = [to_column(n, personas) for n in node[1]]
    # Pairwise, so a chain of n names is an expression log2(n) deep rather than n deep (Spark's analyzer recurses).
    while len(parts) > 1:
        pairs = [(a & b) if kind == "and" else (a | b) for a, b in zip(parts[::2], parts[1::2])]
        parts = pairs + parts[len(pairs) * 2:]
    return parts[0]


def members(persona_sets: DataFrame, query: Node) -> DataFrame:
    """``user_idx`` of the customers whose persona set (``user_idx, persona_idx array<int>``) matches."""
    return persona_sets.filter(to_column(query, F.col("persona_idx"))).select("user_idx")


def changes(previous: DataFrame | None, current: DataFrame, audience: str, run_id: str,
            previous_run_id: str | None) -> DataFrame:
    """``audience_changes`` rows: who was ``added`` to / ``removed`` from the audience since the previous
    export (``user_idx, customer_id`` members; without a previous export everyone is added)."""
    current = current.select("user_idx", "customer_id")
    if previous is None:
        added, removed = current, current.limit(0)
    else:
        previous = previous.select("user_idx", "customer_id")
        added = current.join(previous, "user_idx", "left_anti")
        removed = previous.join(current, "user_idx", "left_anti")
    rows = added.withColumn("change", F.lit("added")).unionByName(removed.withColumn("change", F.lit("removed")))
    return rows.select(F.lit(audience).alias("audience"), F.lit(run_id).alias("run_id"),
                       F.lit(previous_run_id).cast("string").alias("previous_run_id"), "user_idx", "customer_id", "change")


@dataclass
class Audience:
    """One audience of a run: its ``audience_members`` and ``audience_changes`` slices (both pinned) and
    the counts the stage reports."""

    spec: AudienceSpec
    members: DataFrame
    changes: DataFrame
    summary: dict  # query, members, added, removed, previous_run_id


@dataclass
class AudienceRun:
    run_id: str  # the gplr run the audiences are of
    audiences: list[Audience]


def build_audiences(conf: AudienceConf, persona_set: PersonaSet, runs: DataFrame | None, personas: DataFrame | None,
                    users: DataFrame | None, stored: DataFrame | None, checkpoint_mode: str) -> AudienceRun:
    """The selected audiences of the latest gplr run (``runs``) against each one's previous run in
    ``stored`` (``audience_members``; None where a table is missing). Every query is checked first, so
    a typo fails before anything is computed; the slices are pinned, as writing them rewrites ``stored``."""
    try:
        specs = conf.selected()
    except ValueError as error:
        raise AudienceError(str(error)) from None
    queries = [(spec, parse(spec.query, persona_set)) for spec in specs]
    if runs is None or personas is None or users is None:
        raise AudienceError("audience: no personas yet: run persona-spark gplr first")
    latest = latest_runs(runs)[0]
    run_id, run_ts = latest["run_id"], utc(latest["run_ts"])
    sets = checkpoint(persona_sets(personas), checkpoint_mode)
    customers = users.select("user_idx", "customer_id")
    done = []
    for spec, query in queries:
        chosen = checkpoint(members(sets, query).join(customers, "user_idx", "left")
                            .select(F.lit(spec.name).alias("audience"), F.lit(run_id).alias("run_id"),
                                    F.lit(run_ts).cast("timestamp").alias("run_ts"), F.lit(spec.query).alias("query"),
                                    "user_idx", "customer_id"), checkpoint_mode)
        previous, previous_run_id = None, None
        if stored is not None:
            earlier = stored.filter((F.col("audience") == spec.name) & (F.col("run_ts") < F.lit(run_ts)))
            last = latest_runs(earlier.select("run_id", "run_ts").distinct())
            if last:
                previous_run_id = last[0]["run_id"]
                previous = earlier.filter(F.col("run_id") == previous_run_id)
        diff = checkpoint(changes(previous, chosen, spec.name, run_id, previous_run_id), checkpoint_mode)
        moved = {r["change"]: r["count"] for r in diff.groupBy("change").count().collect()}
        done.append(Audience(spec, chosen, diff, {"query": spec.query, "members": chosen.count(),
                                                  "added": moved.get("added", 0), "removed": moved.get("removed", 0),
                                                  "previous_run_id": previous_run_id}))
    return AudienceRun(run_id, done)
