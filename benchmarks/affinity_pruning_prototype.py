"""Single-machine prototype (numpy/scipy only) of cheaper Ψ hops at ℓ̂ = 2, before touching the engine (#16 item 2).

    python benchmarks/affinity_pruning_prototype.py                                # generated ~0.8 M edges
    python benchmarks/affinity_pruning_prototype.py --edges-cache /tmp/edges-13m \\
        --users 206209 --items 49677                                               # affinity.py's 13 M graph

Variants, each timed on its products alone (the 2ℓ̂ sparse × state multiplications), with the top-5
agreement (``benchmarks.affinity.top_k_agreement``) against float64 exact:

* ``float32``: tiles and states in float32 (products accumulate in float32);
* ``f64_compute_f32_storage``: float64 products, each hop's state rounded to float32 (what shipping
  float32 states with float64 arithmetic costs: the casts);
* ``relative δ``: mass-relative pruning after every hop, θ = δ/(2ℓ̂) — per node, the smallest persona
  entries are dropped while their sum stays ≤ θ·‖x[v]‖₁ — with the state stored sparse in personas
  (CSR) and multiplied sparse × sparse, the only way dropped entries save work. ``density`` is the
  share of (node, persona) entries of each hop's input state that is stored, ``max_rel_l1`` the
  largest ‖Ψ_u − Ψ̂_u‖₁/‖Ψ_u‖₁ (proven ≤ δ).

Labels as in ``benchmarks/affinity.py`` (5 % of users, 1–5 random personas of 51, β = 0.5 de-bias),
drawn with numpy. One JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import scipy.sparse as sp

from benchmarks.affinity import top_k_agreement
from persona_spark.affinity.reference import transition_matrices


def generated_edges(users: int, items: int, edges: int, seed: int = 7, sigma: float = 1.0):
    """Lognormal activity, Zipf(1) items, duplicates dropped (numpy version of ``synthetic_edges``)."""
    rng = np.random.default_rng(seed)
    activity = np.exp(rng.standard_normal(users) * sigma)
    degree = np.clip(np.round(activity * edges / activity.sum()).astype(int), 1, items)
    u = np.repeat(np.arange(users), degree)
    item = np.minimum(items - 1, np.floor((items + 1.0) ** rng.random(len(u))).astype(int) - 1)
    pairs = np.unique(u.astype(np.int64) * items + item)
    return (pairs // items).astype(np.int32), (pairs % items).astype(np.int32)


def random_prototypes(users: int, personas: int = 51, fraction: float = 0.05, beta: float = 0.5, seed: int = 7):
    rng = np.random.default_rng(seed + 2)
    L = np.zeros((users, personas))
    for user in np.flatnonzero(rng.random(users) < fraction):
        k = rng.integers(1, 6)
        L[user, rng.choice(personas, k, replace=False)] = 1.0 / k
    mass = (L > 0).sum(0).astype(float)
    c = np.zeros(personas)
    c[mass > 0] = (mass[mass > 0].min() / mass[mass > 0]) ** beta
    return L * c


def prune_mass(x: np.ndarray, theta: float) -> np.ndarray:
    """Per row, zero the smallest entries while their sum stays ≤ θ·(row sum)."""
    order = np.argsort(x, axis=1)
    ascending = np.take_along_axis(x, order, 1)
    dropped = np.cumsum(ascending, 1) <= theta * ascending.sum(1, keepdims=True)
    out = np.empty_like(x)
    np.put_along_axis(out, order, np.where(dropped, 0.0, ascending), 1)
    return out


def walk(to_items, to_users, L, ell, dtype=np.float64, theta=0.0, sparse=False, store=None):
    """Ψ by 2ℓ̂ hops; returns (Ψ, seconds in products and casts, stored density of each hop's input)."""
    to_items, to_users = to_items.astype(dtype), to_users.astype(dtype)
    x, total, seconds, density = L.astype(store or dtype), np.zeros(L.shape), 0.0, []
    for _ in range(ell):
        for A in (to_items, to_users):
            if sparse:
                state = sp.csr_matrix(x)
                density.append(state.nnz / x.size)
                started = time.perf_counter()
                y = (A @ state).toarray()
            else:
                density.append(np.count_nonzero(x) / x.size)
                started = time.perf_counter()
                y = A @ x.astype(dtype, copy=False)
                if store:
                    y = y.astype(store)
            seconds += time.perf_counter() - started
            x = prune_mass(y, theta) if theta > 0 else y
        total += x
    return total / ell, seconds, density


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--edges", type=int, default=1_000_000)
    parser.add_argument("--edges-cache", help="parquet edges written by benchmarks/affinity.py --edges-cache")
    parser.add_argument("--ell", type=int, default=2)
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.01, 0.03, 0.05])
    args = parser.parse_args(argv)
    if args.edges_cache:
        import pyarrow.dataset
        table = pyarrow.dataset.dataset(args.edges_cache, format="parquet").to_table(columns=["user_idx", "item_idx"])
        u, i = table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy()
    else:
        u, i = generated_edges(args.users, args.items, args.edges)
    L = random_prototypes(args.users)
    P, P_t = transition_matrices(u, i, args.users, args.items)
    common = {"edges": len(u), "users": args.users, "items": args.items, "ell": args.ell}

    def line(variant, psi, seconds, density, exact, **extra):
        rel = np.abs(psi - exact).sum(1) / np.maximum(exact.sum(1), 1e-300)
        elementwise = np.abs(psi - exact) / np.where(exact > 0, exact, np.inf)
        print(json.dumps({"variant": variant, **common, "product_seconds": round(seconds, 3),
                          "top5_agreement": round(top_k_agreement(psi, exact), 6),
                          "users_nonempty_share": round(float(psi.any(1).mean()), 5),
                          "max_rel_l1": float(rel.max()), "max_rel_elementwise": float(elementwise.max()),
                          "density": [round(d, 4) for d in density], "load": os.getloadavg()[0], **extra}), flush=True)

    exact, seconds, density = walk(P_t, P, L, args.ell)
    line("float64_exact", exact, seconds, density, exact)
    line("float32", *walk(P_t, P, L, args.ell, dtype=np.float32), exact)
    line("f64_compute_f32_storage", *walk(P_t, P, L, args.ell, store=np.float32), exact)
    for delta in args.deltas:
        line("relative", *walk(P_t, P, L, args.ell, theta=delta / (2 * args.ell), sparse=True), exact, delta=delta,
             theta=delta / (2 * args.ell))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
