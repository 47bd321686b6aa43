"""Persona explorer on the tiny planted shop: persona groups, distinctive items, and why a user got its personas."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import pytest

from persona_spark import explore
from tests.persona_world import (  # noqa: F401 (module fixtures)
    BESTSELLER,
    COMBOS,
    ITEMS_PER_PERSONA,
    LLM_USERS,
    N_USERS,
    PERSONAS,
    combo_of,
    frames,
    world,
)


def users_of(df) -> set[int]:
    return {r["user_idx"] for r in df.select("user_idx").collect()}


def test_users_with_intersections_unions_and_exclusions(frames):
    personas = frames["personas"]
    expect = lambda keep: {u for u in range(N_USERS) if keep(set(combo_of(u)))}  # noqa: E731
    both = explore.users_with(personas, ["gardener", "Home  Baker"], persona_set=PERSONAS)  # normalized names
    assert users_of(both) == expect(lambda c: {0, 1} <= c) != set()
    assert {tuple(r["personas"]) for r in both.collect()} == {("Gardener", "Home Baker")}
    assert users_of(explore.users_with(personas, [0, 2], mode="any")) == expect(lambda c: bool(c & {0, 2}))
    only_gardeners = explore.users_with(personas, 0, exclude="Home Baker", persona_set=PERSONAS)
    assert users_of(only_gardeners) == expect(lambda c: c == {0})
    assert users_of(explore.users_with(personas, exclude=[2])) == expect(lambda c: 2 not in c)


def test_users_with_rejects_bad_requests(frames):
    personas = frames["personas"]
    with pytest.raises(KeyError, match="Astronaut"):
        explore.users_with(personas, "Astronaut", persona_set=PERSONAS)
    with pytest.raises(KeyError, match="outside persona set"):
        explore.users_with(personas, 7, persona_set=PERSONAS)
    with pytest.raises(ValueError, match="both included and excluded"):
        explore.users_with(personas, [0, 1], exclude=1)
    with pytest.raises(ValueError, match="pass persona_set"):
        explore.users_with(personas, "Gardener")
    with pytest.raises(ValueError, match="mode"):
        explore.users_with(personas, 0, mode="some")


def test_persona_groups_count_every_combination(frames):
    groups = explore.persona_groups(frames["personas"], ["Gardener", "Home Baker"], PERSONAS).toPandas()
    expected = Counter(tuple(sorted(set(combo_of(u)) & {0, 1})) for u in range(N_USERS))
    got = {tuple(idx): users for idx, users in zip(groups["persona_idx"], groups["users"])}
    assert got == dict(expected)
    assert groups["share"].sum() == pytest.approx(1.0)
    names = {tuple(idx): tuple(n) for idx, n in zip(groups["persona_idx"], groups["personas"])}
    assert names[()] == () and names[(0, 1)] == ("Gardener", "Home Baker")


def test_items_for_a_persona_are_its_own_not_the_bestseller(world, frames):
    top = explore.items_for("Book Lover", frames["personas"], frames["edges"], frames["items"], PERSONAS, top_n=4)
    rows = top.toPandas()
    assert list(rows["item_rank"]) == list(range(1, len(rows) + 1)) and 0 < len(rows) <= 4
    assert all(i // ITEMS_PER_PERSONA == 2 for i in rows["item_idx"])
    assert BESTSELLER not in set(rows["item_idx"])
    # buyers and lift recomputed from the edges in plain Python
    pairs = {(e[0], e[1]) for e in world.edges}
    members = {u for u in range(N_USERS) if 2 in combo_of(u)}
    buyers_all = Counter(i for _, i in pairs)
    for item, buyers, lift in zip(rows["item_idx"], rows["buyers"], rows["lift"]):
        in_group = sum(1 for u in members if (u, item) in pairs)
        assert buyers == in_group
        assert lift == pytest.approx((in_group / len(members)) / (buyers_all[item] / N_USERS))


def one_step_contributions(world, user: int, beta: float = 0.5):
    """The t=1 term of Ψ for one user, from the train edges with numpy: (persona, neighbour, item) -> share."""
    train = [(u, i) for u, i, *_, split in world.edges if split == "train"]
    n_items = max(i for _, i in train) + 1
    a = np.zeros((N_USERS, n_items))
    for u, i in train:
        a[u, i] = 1.0
    p_out = a[user] / a[user].sum()
    p_back = a / a.sum(axis=0, keepdims=True).clip(min=1e-12)  # [v, i]: item i -> user v
    labelled = defaultdict(set)
    for u, r, _, _, source in world.personas:
        if source == "llm":
            labelled[u].add(r)
    q = Counter(r for rs in labelled.values() for r in rs)
    debias = {r: (min(q.values()) / q[r]) ** beta for r in q}
    paths = defaultdict(float)
    for v, rs in labelled.items():
        for r in rs:
            for i in range(n_items):
                paths[(r, v, i)] += p_out[i] * p_back[v, i] * debias[r] / len(rs)
    return paths


def test_explain_matches_the_one_step_walk(world, frames):
    user = 31  # a propagated Gardener + Home Baker
    assert combo_of(user) == (0, 1) and user >= LLM_USERS
    why = explore.explain(user, frames["personas"], frames["edges"], frames["items"], PERSONAS, top_n=50)
    own = why.personas.toPandas()
    assert list(own["persona"]) == ["Gardener", "Home Baker"] and set(own["source"]) == {"propagated"}

    paths = one_step_contributions(world, user)
    neighbours = why.neighbours.toPandas()
    items = why.items.toPandas()
    for persona in combo_of(user):
        expected_by_neighbour = defaultdict(float)
        expected_by_item = defaultdict(float)
        for (r, v, i), c in paths.items():
            if r == persona and c > 0:
                expected_by_neighbour[v] += c
                expected_by_item[i] += c
        got_n = neighbours[neighbours["persona_idx"] == persona].set_index("neighbour_idx")["contribution"]
        got_i = items[items["persona_idx"] == persona].set_index("item_idx")["contribution"]
        assert dict(got_n) == pytest.approx(dict(expected_by_neighbour))
        assert dict(got_i) == pytest.approx(dict(expected_by_item))
        assert neighbours[neighbours["persona_idx"] == persona]["share"].sum() == pytest.approx(1.0)
        # neighbours are labelled users carrying the persona; items are the user's own train purchases
        assert all(v < LLM_USERS and persona in combo_of(v) for v in got_n.index)
        assert set(got_i.index) <= {i for u, i, *_, s in world.edges if u == user and s == "train"}
    assert items["item_name"].notna().all()


def test_explain_top_n_keeps_the_largest_contributors(frames):
    full = explore.explain(31, frames["personas"], frames["edges"], top_n=50).neighbours.toPandas()
    top2 = explore.explain(31, frames["personas"], frames["edges"], top_n=2).neighbours.toPandas()
    for persona, group in full.groupby("persona_idx"):
        best = sorted(group["contribution"], reverse=True)[:2]
        assert sorted(top2[top2["persona_idx"] == persona]["contribution"], reverse=True) == pytest.approx(best)
    assert set(top2["persona"]) == {f"persona {p}" for p in COMBOS[3]}  # no persona set: generic names
