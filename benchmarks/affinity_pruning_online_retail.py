"""Mass-relative pruning on OnlineRetail's real (recorded GPT-4) labels: stored density of each hop state, top-5 agreement.

    python benchmarks/affinity_pruning_online_retail.py [DATA]   # default /work/shared/data/online_retail_gplr

5 % of the labelled users (seed 0) as prototypes, β = 0.5, ℓ̂ = 2, θ = δ/(2ℓ̂) after every hop
(``affinity_pruning_prototype.prune_mass``); density = stored share of the (node, persona) entries of
the reached rows after each hop (what a persona-sparse state would hold).
"""
import json, sys, numpy as np
from benchmarks.affinity import top_k_agreement
from benchmarks.affinity_pruning_prototype import prune_mass
from persona_spark.affinity.reference import exact_affinity, transition_matrices
d = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/online_retail_gplr"
train = json.load(open(f"{d}/train.json")); labels = json.load(open(f"{d}/user_personas_gpt4.json"))
R = len(json.load(open(f"{d}/personas.json")))
u = np.array([int(k) for k, v in train.items() for _ in v]); i = np.array([x for v in train.values() for x in v])
nu, ni = u.max() + 1, i.max() + 1
rng = np.random.default_rng(0)
L = np.zeros((nu, R))
for k, ps in labels.items():
    if int(k) < nu and rng.random() < 0.05 and ps:
        L[int(k), ps] = 1.0 / len(ps)
mass = (L > 0).sum(0).astype(float); c = np.zeros(R); c[mass > 0] = (mass[mass > 0].min() / mass[mass > 0]) ** 0.5; L *= c
P, Pt = transition_matrices(u, i, nu, ni)
ex = exact_affinity(u, i, L, 2, ni)
print(json.dumps({"users": int(nu), "items": int(ni), "edges": len(u), "personas": R, "labelled": int(L.any(1).sum())}))
for delta in [0.0, 0.01, 0.03, 0.05, 0.1]:
    theta = delta / 4; x = L.copy(); tot = np.zeros_like(L); dens = []
    for _ in range(2):
        for A in (Pt, P):
            x = A @ x
            if theta: x = prune_mass(x, theta)
            reached = x.any(1)
            dens.append(round(float(np.count_nonzero(x[reached]) / max(1, x[reached].size)), 4))
        tot += x
    tot /= 2
    print(json.dumps({"delta": delta, "density_of_reached_rows_after_each_hop": dens,
                      "top5_agreement": round(top_k_agreement(tot, ex), 5)}))
