"""Time (and peak memory) of one affinity engine row against graph size, from ``benchmarks/affinity.py`` lines.

    python benchmarks/plot_affinity_scale.py benchmarks/results/affinity_scale.jsonl \\
        --engine spark_exact --ell 1 --out docs/assets/affinity_scale.png

Reads the JSON lines the affinity benchmark printed, keeps the rows of one engine and ℓ̂, and draws
seconds against edges on log–log axes with each point's peak RSS written beside it. Prints one JSON
line per point plotted (and the ratio of each point's time to the previous one's), so the figure
can be checked against the raw lines.
"""

from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def points(paths: list[str], engine: str, ell: int) -> list[dict]:
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip().startswith("{")]
    chosen = [r for r in rows if r.get("engine") == engine and r.get("ell") == ell]
    return sorted(chosen, key=lambda r: r["edges"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="JSON-lines files written by benchmarks/affinity.py")
    parser.add_argument("--engine", default="spark_exact")
    parser.add_argument("--ell", type=int, default=1)
    parser.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    chosen = points(args.results, args.engine, args.ell)
    if not chosen:
        parser.error(f"no {args.engine} rows with ell={args.ell} in {args.results}")
    previous = None
    for row in chosen:
        line = {"engine": args.engine, "ell": args.ell, "edges": row["edges"], "seconds": row["seconds"],
                "peak_rss_mb": row["peak_rss_mb"], "load_before": row.get("load_before")}
        if previous:
            line.update(edges_ratio=round(row["edges"] / previous["edges"], 2),
                        seconds_ratio=round(row["seconds"] / previous["seconds"], 2))
        print(json.dumps(line))
        previous = row
    edges = [r["edges"] for r in chosen]
    seconds = [r["seconds"] for r in chosen]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(edges, seconds, "o-", label=f"{args.engine}, ℓ̂ = {args.ell}")
    ax.loglog(edges, [seconds[0] * e / edges[0] for e in edges], ":", color="grey", label="linear in edges")
    for row in chosen:
        ax.annotate(f"{row['seconds']:.0f} s, {row['peak_rss_mb'] / 1024:.1f} GB", (row["edges"], row["seconds"]),
                    textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xlabel("edges")
    ax.set_ylabel("seconds (peak RSS beside each point)")
    ax.set_title("Exact affinity on one 2-core machine")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
