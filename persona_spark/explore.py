"""Persona explorer for notebooks: who has which personas, why a user got them, what a persona buys.

Every function returns a Spark DataFrame (call ``.toPandas()`` on the small results to show them).
Personas may be given by name (resolved through a ``PersonaSet``: exact, then case/space-insensitive)
or by index.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, NamedTuple

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from persona_spark.affinity import prototype_weights
from persona_spark.graph import distinctive_items
from persona_spark.personas import PersonaSet
from persona_spark.runtime.frames import require_columns

PersonaRef = int | str


def resolve_personas(refs: PersonaRef | Iterable[PersonaRef], persona_set: PersonaSet | None) -> list[int]:
    """Persona names or indices → sorted distinct indices; an unknown name is a KeyError naming it."""
    if isinstance(refs, (int, str)):
        refs = [refs]
    indices = set()
    for ref in refs:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise TypeError(f"persona must be a name or an index, got {ref!r}")
        if isinstance(ref, str):
            if persona_set is None:
                raise ValueError(f"persona {ref!r} given by name: pass persona_set to resolve names")
            ref = persona_set.index_of(ref)
        elif persona_set is not None and not 0 <= ref < len(persona_set):
            raise KeyError(f"persona index {ref} is outside persona set {persona_set.title!r} (0..{len(persona_set) - 1})")
        indices.add(ref)
    return sorted(indices)


def _names_of(indices: Column, persona_set: PersonaSet | None) -> Column:
    """Array of persona indices → array of names (``persona <i>`` without a persona set)."""
    if persona_set is None:
        return F.transform(indices, lambda i: F.concat(F.lit("persona "), i.cast("string")))
    names = F.array(*[F.lit(n) for n in persona_set.names])
    return F.transform(indices, lambda i: F.element_at(names, i + 1))


def persona_sets(personas: DataFrame) -> DataFrame:
    """``user_idx, persona_idx``: each user's personas as a sorted array."""
    return personas.groupBy("user_idx").agg(F.array_sort(F.collect_set("persona_idx")).alias("persona_idx"))


def users_with(
    personas: DataFrame,
    include: PersonaRef | Iterable[PersonaRef] = (),
    exclude: PersonaRef | Iterable[PersonaRef] = (),
    mode: Literal["all", "any"] = "all",
    persona_set: PersonaSet | None = None,
) -> DataFrame:
    """``user_idx, persona_idx, personas``: users having all (intersection) or any (union) of
    ``include`` and none of ``exclude`` — any of the paper's 2^|R| persona groups, or unions of them."""
    if mode not in ("all", "any"):
        raise ValueError(f"mode must be 'all' or 'any', not {mode!r}")
    wanted = resolve_personas(include, persona_set)
    unwanted = resolve_personas(exclude, persona_set)
    clash = set(wanted) & set(unwanted)
    if clash:
        raise ValueError(f"personas {sorted(clash)} are both included and excluded")
    sets = persona_sets(personas)
    have = F.col("persona_idx")
    if wanted:
        wanted_arr = F.array(*[F.lit(i) for i in wanted])
        if mode == "all":
            sets = sets.filter(F.size(F.array_intersect(have, wanted_arr)) == len(wanted))
        else:
            sets = sets.filter(F.arrays_overlap(have, wanted_arr))
    if unwanted:
        sets = sets.filter(~F.arrays_overlap(have, F.array(*[F.lit(i) for i in unwanted])))
    return sets.withColumn("personas", _names_of(have, persona_set))


def persona_groups(
    personas: DataFrame, among: Iterable[PersonaRef], persona_set: PersonaSet | None = None
) -> DataFrame:
    """``personas, persona_idx, users, share``: how many users fall in each of the 2^|among| groups
    (which of the ``among`` personas they have; the empty group is users with none of them)."""
    chosen = resolve_personas(among, persona_set)
    if not chosen:
        raise ValueError("persona_groups needs at least one persona in 'among'")
    chosen_arr = F.array(*[F.lit(i) for i in chosen])
    grouped = (
        persona_sets(personas)
        .select(F.array_sort(F.array_intersect("persona_idx", chosen_arr)).alias("persona_idx"))
        .groupBy("persona_idx")
        .agg(F.count("*").alias("users"))
    )
    return grouped.select(
        _names_of(F.col("persona_idx"), persona_set).alias("personas"),
        "persona_idx",
        "users",
        (F.col("users") / F.sum("users").over(Window.partitionBy())).alias("share"),
    ).orderBy(F.desc("users"))


def items_for(
    persona: PersonaRef | Iterable[PersonaRef],
    personas: DataFrame,
    edges: DataFrame,
    items: DataFrame,
    persona_set: PersonaSet | None = None,
    top_n: int = 20,
) -> DataFrame:
    """Top items for a persona (or for users having all of several), for persona-first navigation:
    ``item_rank, item_idx, item_id, item_name, buyers, buyer_share, lift``."""
    members = users_with(personas, include=persona, persona_set=persona_set).select("user_idx")
    return distinctive_items(members, edges, items, top_n=top_n).orderBy("item_rank")


class Explanation(NamedTuple):
    """Why one user has its personas: the personas, and the first step of the random walk behind them."""

    personas: DataFrame  # persona_idx, persona, score, rank, source
    neighbours: DataFrame  # persona_idx, persona, neighbour_idx, contribution, share
    items: DataFrame  # persona_idx, persona, item_idx, item_name, contribution, share


def explain(
    user_idx: int,
    personas: DataFrame,
    edges: DataFrame,
    items: DataFrame | None = None,
    persona_set: PersonaSet | None = None,
    top_n: int = 10,
    beta: float = 0.5,
    weighted: bool = False,
) -> Explanation:
    """Which labelled neighbours and which purchased items carried each of ``user_idx``'s personas.

    Uses the t=1 term of Ψ — user → item (P) → labelled user (P') → labels (L) — restricted to
    this one user: a two-hop neighbourhood, computed in Spark from ``edges`` (split='train' when
    the column exists) and the LLM-labelled rows of ``personas``. ``share`` is a contributor's part
    of the persona's one-step affinity. ``weighted`` uses n_purchases as edge weight, as
    propagation does when configured so.
    """
    require_columns(personas, ["user_idx", "persona_idx", "score", "rank", "source"], "personas")
    require_columns(edges, ["user_idx", "item_idx"] + (["n_purchases"] if weighted else []), "edges")
    if "split" in edges.columns:
        edges = edges.filter(F.col("split") == "train")
    weight = F.col("n_purchases").cast("double") if weighted else F.lit(1.0)
    walk_edges = edges.select("user_idx", "item_idx", weight.alias("w"))
    names = _names_of(F.array(F.col("persona_idx")), persona_set)[0].alias("persona")

    own = personas.filter(F.col("user_idx") == user_idx).select("persona_idx", "score", "rank", "source")
    own_personas = own.select("persona_idx", names, "score", "rank", "source").orderBy("rank")

    start = walk_edges.filter(F.col("user_idx") == user_idx)
    step_out = start.select("item_idx", (F.col("w") / F.sum("w").over(Window.partitionBy())).alias("p_out"))
    around = walk_edges.join(F.broadcast(step_out.select("item_idx")), "item_idx")
    step_back = around.select(
        "item_idx",
        F.col("user_idx").alias("neighbour_idx"),
        (F.col("w") / F.sum("w").over(Window.partitionBy("item_idx"))).alias("p_back"),
    )
    llm_labels = personas.filter(F.col("source") == "llm").select("user_idx", "persona_idx")
    labels = prototype_weights(llm_labels, beta).withColumnRenamed("user_idx", "neighbour_idx")
    paths = (
        step_out.join(step_back, "item_idx")
        .join(labels, "neighbour_idx")
        .join(F.broadcast(own.select("persona_idx")), "persona_idx")
        .select("persona_idx", "item_idx", "neighbour_idx", (F.col("p_out") * F.col("p_back") * F.col("weight")).alias("c"))
    )

    def top_contributors(by: str) -> DataFrame:
        summed = paths.groupBy("persona_idx", by).agg(F.sum("c").alias("contribution"))
        per_persona = Window.partitionBy("persona_idx")
        return (
            summed.withColumn("share", F.col("contribution") / F.sum("contribution").over(per_persona))
            .withColumn("pos", F.row_number().over(per_persona.orderBy(F.desc("contribution"), by)))
            .filter(F.col("pos") <= top_n)
            .select("persona_idx", names, by, "contribution", "share")
        )

    neighbours = top_contributors("neighbour_idx").orderBy("persona_idx", F.desc("contribution"))
    item_rows = top_contributors("item_idx")
    if items is not None:
        item_rows = item_rows.join(items.select("item_idx", "item_name"), "item_idx", "left")
    else:
        item_rows = item_rows.withColumn("item_name", F.lit(None).cast("string"))
    item_rows = item_rows.select("persona_idx", "persona", "item_idx", "item_name", "contribution", "share").orderBy(
        "persona_idx", F.desc("contribution")
    )
    return Explanation(own_personas, neighbours, item_rows)
