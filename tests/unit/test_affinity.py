"""The affinity engine's single-machine parts: the references it is checked against (exact scipy Ψ and the
paper's RevAff), its radix order and the de-bias weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from persona_spark.affinity import debias_weights
from persona_spark.affinity.engine import _stable_order
from persona_spark.affinity.reference import exact_affinity, push_error_bound, rev_aff
from tests.affinity_world import small_graphs


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 2**31 - 1).flatmap(lambda bound: st.tuples(
    st.just(bound), st.lists(st.integers(0, bound - 1) | st.sampled_from([0, bound - 1]), max_size=300))))
def test_radix_order_is_numpys_stable_argsort(case):
    bound, keys = case
    keys = np.array(keys, dtype=np.int32)
    np.testing.assert_array_equal(_stable_order(keys, bound), np.argsort(keys, kind="stable"))


# ---- the ε guarantee -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(small_graphs(max_users=20, max_items=10), st.integers(1, 3), st.sampled_from([0.0, 0.01, 0.1, 0.5]),
       st.sampled_from(["receiver", "sender"]), st.booleans())
def test_rev_aff_is_exact_at_eps_zero_and_within_its_bound_otherwise(graph_case, ell, eps, degree, weighted):
    users, items, labels, n_items = graph_case
    weights = (np.arange(len(users)) % 3 + 1.0) if weighted else None
    exact = exact_affinity(users, items, labels, ell, n_items, weights, degree)
    gap = exact - rev_aff(users, items, labels, ell, eps, n_items, weights, degree)
    bound = push_error_bound(users, items, labels.shape[0], ell, eps, n_items, weights, degree)
    if eps == 0:
        np.testing.assert_allclose(gap, 0, atol=1e-12)
    assert gap.min() >= -1e-12  # RevAff never overestimates
    assert (gap <= bound[:, None] + 1e-12).all()
    if degree == "receiver":  # Eq. 2's walk: Theorem 3, with every pushed Δ kept, ℓ̂θ = ε/2
        assert bound.max() <= eps / 2 + 1e-12 and gap.max() <= eps / 2 + 1e-12


def test_sender_degree_is_the_transposed_walk_and_loses_theorem_3():
    # u0 buys i0 (shared by u0..u3) and i1 (its own); u0 is the only prototype.
    users, items = np.array([0, 1, 2, 3, 0]), np.array([0, 0, 0, 0, 1])
    labels = np.array([[1.0], [0.0], [0.0], [0.0]])
    # Eq. 2 walks from each user: u1..u3 reach i0, then u0 with probability 1/4.
    np.testing.assert_allclose(rev_aff(users, items, labels, 1, 0.0)[:, 0], [1 / 2 * 1 / 4 + 1 / 2, 1 / 4, 1 / 4, 1 / 4])
    # Algorithm 2 line 6 divides by the sender's degree: u0 sends 1/2 to each item, i0 splits its half 4 ways.
    sender = rev_aff(users, items, labels, 1, 0.0, degree="sender")[:, 0]
    np.testing.assert_allclose(sender, [1 / 8 + 1 / 2, 1 / 8, 1 / 8, 1 / 8])
    np.testing.assert_allclose(exact_affinity(users, items, labels, 1, degree="sender")[:, 0], sender)
    # u0 shares each of 40 items with one prototype of degree 11: each sends 1/11 < θ = 0.1 to the
    # shared item, which (degree 2) would pass half of it to u0. Line 6 leaves all of it unpushed:
    # u0 misses 40/22 ≫ ε = 0.2, while the receiver-degree push stays within ε/2.
    pairs = [(0, j) for j in range(40)] + [(1 + j, j) for j in range(40)] + [(1 + j, 40 + k) for j in range(40) for k in range(10)]
    users, items = np.array(pairs).T
    labels = np.r_[0.0, np.ones(40)][:, None]
    gap = exact_affinity(users, items, labels, 1, degree="sender") - rev_aff(users, items, labels, 1, 0.2, degree="sender")
    assert gap[0, 0] == pytest.approx(40 / 22)
    receiver_gap = exact_affinity(users, items, labels, 1) - rev_aff(users, items, labels, 1, 0.2)
    assert 0 <= receiver_gap.min() and receiver_gap.max() <= 0.1 + 1e-12


def test_exact_scipy_reference_by_hand():
    # u0 - i0 - u1 - i1: P = [[1, 0], [1/2, 1/2]], P' = [[1/2, 1/2], [0, 1]]; L labels u0 with persona 0.
    users, items = np.array([0, 1, 1]), np.array([0, 0, 1])
    labels = np.array([[1.0], [0.0]])
    # P P' = [[1/2, 1/2], [1/4, 3/4]] -> (P P') L = [1/2, 1/4]
    np.testing.assert_allclose(exact_affinity(users, items, labels, 1), [[0.5], [0.25]])
    # (P P')^2 L = [3/8, 5/16]; Ψ(ℓ̂=2) = mean of both
    np.testing.assert_allclose(exact_affinity(users, items, labels, 2), [[(0.5 + 0.375) / 2], [(0.25 + 0.3125) / 2]])


# ---- L: prototype labels and de-bias ------------------------------------------------------------
def test_debias_weights():
    np.testing.assert_allclose(debias_weights({0: 4.0, 1: 2.0, 2: 1.0}, 4, 1.0), [0.25, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(debias_weights({0: 4.0, 1: 1.0}, 3, 0.5), [0.5, 1.0, 0.0])
    np.testing.assert_allclose(debias_weights({0: 4.0, 1: 1.0}, 2, 0.0), [1.0, 1.0])
