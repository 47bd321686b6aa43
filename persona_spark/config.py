"""Typed configuration, loaded once at the edge (CLI, job, notebook) and passed down.

Every knob has a default that runs on a laptop; a YAML file and ``--set section.key=value``
overrides adjust it. Unknown keys are errors so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_PERSONAS = PACKAGE_ROOT / "resources" / "personas" / "demo_shop.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SparkConf(Section):
    master: str = "local[*]"
    app_name: str = "persona-spark"
    shuffle_partitions: int = 4
    default_parallelism: int = 4
    driver_memory: str = "4g"
    ui_enabled: bool = False
    checkpoint_dir: str = "data/checkpoints"
    # Extra Spark settings, e.g. {"spark.jars.packages": "io.delta:delta-spark_2.13:4.0.0"}
    # on a cluster that can reach Maven; the Delta extensions are added automatically then.
    extra: dict[str, str] = Field(default_factory=dict)


class TablesConf(Section):
    # Local mode: every table is a Delta table under ``root``/<name>.
    root: str = "data/tables"
    # Catalog mode (Databricks / Unity Catalog): tables are ``catalog.schema.name``.
    catalog: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    # Rename individual tables: {"transactions": "sales_lines"}.
    names: dict[str, str] = Field(default_factory=dict)
    # auto: the Spark Delta connector when it is on the classpath, delta-rs otherwise.
    backend: Literal["auto", "spark", "delta-rs"] = "auto"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class IngestConf(Section):
    source: str | None = None  # path (csv/parquet/delta) or table name; None = generated demo data
    format: Literal["csv", "parquet", "delta", "table"] = "csv"
    preset: Literal["canonical", "online_retail", "instacart"] = "canonical"
    # canonical column -> source column; overrides the preset's mapping.
    mapping: dict[str, str] = Field(default_factory=dict)
    # Instacart: order lines are joined with these product names.
    products: str | None = None
    timestamp_format: str | None = None  # None: Spark's default parsing
    cancellation_prefix: str | None = None  # Online Retail: "C"
    # overwrite: the source is the full history; append: the source is a new batch of lines.
    mode: Literal["overwrite", "append"] = "overwrite"


class GraphConf(Section):
    min_user_degree: int = 1
    min_item_degree: int = 1
    test_fraction: float = 0.2
    seed: int = 42
    # Folder of the paper's index-based split (train.json, test.json, *_personas_gpt4.json),
    # loaded by the ``load-paper-split`` stage instead of ingest + build-graph.
    paper_split_dir: str | None = None


class GenerateConf(Section):
    users: int = 2000
    items: int = 600
    mean_orders_per_user: float = 6.0
    mean_lines_per_order: float = 4.0
    min_personas: int = 1
    max_personas: int = 4
    persona_purity: float = 0.75  # share of lines drawn from a user's personas (rest: popularity)
    zipf_exponent: float = 1.1
    start_date: str = "2024-01-01"
    days: int = 365
    seed: int = 7
    partitions: int = 4
    dirty_share: float = 0.01  # lines blemished on purpose so the demo exercises the quarantine


class AffinityConf(Section):
    ell: int = 2
    eps: float = 0.0
    beta: float = 0.5
    weighted: bool = False
    broadcast_max_rows: int = 2_000_000


class SegmentConf(Section):
    """Segmentation and robustness (paper §7.4): one-hot personas or RFM -> PCA -> L2 -> KMeans."""

    ks: list[int] = Field(default_factory=lambda: [5, 15, 25, 35])
    pca_components: int = 3
    rfm_buckets: int = 10  # quantile buckets per R, F and M
    max_iter: int = 20
    seed: int = 42
    top_personas: int = 3  # dominant personas named per segment
    top_items: int = 5  # distinctive items named per segment


class ReportConf(Section):
    path: str = "data/report/index.html"  # PNG figures are written next to it, and embedded in it
    k: int | None = None  # segmentation shown in detail; None: the k with the best persona silhouette
    max_points: int = 3000  # users sampled for the segment projection plots
    top_personas: int = 20  # personas shown in the persona bar chart / heat map (most frequent)


class Config(Section):
    personas: str = str(DEFAULT_PERSONAS)
    spark: SparkConf = Field(default_factory=SparkConf)
    tables: TablesConf = Field(default_factory=TablesConf)
    ingest: IngestConf = Field(default_factory=IngestConf)
    graph: GraphConf = Field(default_factory=GraphConf)
    generate: GenerateConf = Field(default_factory=GenerateConf)
    affinity: AffinityConf = Field(default_factory=AffinityConf)
    segment: SegmentConf = Field(default_factory=SegmentConf)
    report: ReportConf = Field(default_factory=ReportConf)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {dotted}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with the value parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    tree: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{path}: top level must be a mapping of sections")
        tree = loaded or {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, key, value)
    return Config.model_validate(tree)
