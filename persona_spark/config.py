"""Typed configuration, loaded once at the edge (CLI, job, notebook) and passed down.

Every knob has a default that runs on a laptop; a YAML file and ``--set section.key=value``
overrides adjust it. Unknown keys are errors so a typo never silently falls back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from persona_spark import storage

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_PERSONAS = PACKAGE_ROOT / "resources" / "personas" / "demo_shop.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SparkConf(Section):
    """Settings of a session this package builds; an active one (spark-submit, Databricks) is reused as it is."""

    master: str = "local[*]"  # local[n], or spark://host:7077 for a standalone cluster
    # Spark Connect instead of a classic session: sc://host:15002 (a running server), or local[n] for a Connect
    # server started here with the settings below. Databricks serverless sessions are reused as they are.
    remote: str | None = None
    app_name: str = "persona-spark"
    shuffle_partitions: int = Field(4, ge=1)  # small machines crawl with Spark's default of 200
    default_parallelism: int = Field(4, ge=1)
    driver_memory: str = "4g"  # local mode: the driver is the whole cluster
    ui_enabled: bool = False
    checkpoint_dir: str = "data/checkpoints"  # reliable checkpoints (affinity.checkpoint=reliable); a URI on a cluster
    # The Delta connector io.delta:delta-spark_2.13 at the installed delta-spark's version (resolved from Maven once
    # per machine); false only for the delta-rs fallback on a jar-less laptop.
    delta: bool = True
    hadoop_aws: bool = False  # org.apache.hadoop:hadoop-aws for s3a:// (switched on when a location is s3a://)
    packages: list[str] = Field(default_factory=list)  # more Maven coordinates group:artifact:version
    repositories: list[str] = Field(default_factory=list)  # Maven repositories tried before Maven Central
    jars: list[str] = Field(default_factory=list)  # jar files or folders of jars: replaces Maven resolution
    ivy_cache: str = "~/.cache/persona-spark/ivy"  # where resolved jars are kept, outside the repository
    warehouse_dir: str | None = None  # spark.sql.warehouse.dir (catalog-mode tables of a local session)
    # Extra Spark settings, e.g. {"spark.executor.memory": "2g"}.
    extra: dict[str, str] = Field(default_factory=dict)


class TablesConf(Section):
    # Local mode: every table is a Delta table under ``root``/<name>.
    root: str = "data/tables"
    # Catalog mode (Databricks / Unity Catalog): tables are ``catalog.schema.name``.
    catalog: str | None = None
    schema_: str | None = Field(default=None, alias="schema")
    # Rename individual tables: {"transactions": "sales_lines"}.
    names: dict[str, str] = Field(default_factory=dict)
    # spark: Spark's Delta connector (everywhere). delta-rs: an explicit fallback for a single machine without the
    # connector jars; refused when the master is not local or the root is not a local path.
    backend: Literal["spark", "delta-rs"] = "spark"

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class IngestConf(Section):
    source: str | None = None  # path (csv/parquet/delta) or table name; None = generated demo data
    format: Literal["csv", "parquet", "delta", "table"] = "csv"  # how to read ``source``
    preset: Literal["canonical", "online_retail", "instacart"] = "canonical"  # column mapping of a known source
    # canonical column -> source column; overrides the preset's mapping.
    mapping: dict[str, str] = Field(default_factory=dict)
    # Instacart: order lines are joined with these product names.
    products: str | None = None
    timestamp_format: str | None = None  # None: Spark's default parsing
    cancellation_prefix: str | None = None  # Online Retail: "C"
    # overwrite: the source is the full history; append: the source is a new batch of lines.
    mode: Literal["overwrite", "append"] = "overwrite"


class GraphConf(Section):
    min_user_degree: int = 1  # users with fewer distinct items are left out of the graph
    min_item_degree: int = 1  # items with fewer distinct buyers are left out of the graph
    test_fraction: float = 0.2  # share of each user's items in the test split (seeded hash per pair)
    seed: int = 42
    # Folder of the paper's index-based split (train.json, test.json, *_personas_gpt4.json),
    # loaded by the ``load-paper-split`` stage instead of ingest + build-graph.
    paper_split_dir: str | None = None


class GenerateConf(Section):
    users: int = 2000  # customers of the generated demo shop
    items: int = 600  # products (named, from the packaged catalog)
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
    ell: int = Field(2, ge=1)  # ℓ̂: number of user→item→user round trips averaged
    eps: float = Field(0.0, ge=0)  # absolute error bound; state entries below eps/(2·ell) are pruned
    beta: float = Field(0.5, ge=0)  # de-bias exponent for rare personas; 0 disables
    weighted: bool = False  # weight edges by n_purchases instead of 1
    # Hop state of at most this many bytes (reached nodes x (4 + 8 x personas)) is broadcast; larger goes through
    # a shuffle join, and no task ever holds a source block larger than this.
    broadcast_max_bytes: int = Field(256 * 2**20, ge=1)
    target_blocks: int = Field(0, ge=0)  # node blocks per kind; 0 = max(parallelism, edges / 4M)
    checkpoint: Literal["local", "reliable"] = "local"  # lineage cut per hop; reliable needs spark.checkpoint_dir


class OpenAIConf(Section):
    """Any OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI, Databricks serving, vLLM, llama.cpp)."""

    base_url: str | None = None  # None: api.openai.com
    model: str = "gpt-4o-mini"  # model / deployment / serving endpoint name
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this env var on the driver ...
    secret_scope: str | None = None  # ... or from this Databricks secret scope/key when the env var is unset
    secret_key: str | None = None
    max_tokens: int = 300  # always sent: bounds the price of every answer
    temperature: float = 0.0
    timeout_s: float = 60.0  # per attempt
    max_attempts: int = 5  # 429 / 5xx / timeouts / connection errors are retried up to this many tries
    backoff_base_s: float = 0.5  # full-jitter exponential backoff when no Retry-After is given
    backoff_max_s: float = 30.0
    # Total requests in flight = concurrency (per partition) x partitions running at once.
    concurrency: int = 8
    partitions: int = 2  # global cap on parallel labeling tasks
    users_per_request: int = 1  # > 1: several users (or items) per prompt, ids validated per user
    json_mode: Literal["json_object", "json_schema", "off"] = "json_object"
    # Shared by every task of a job (a limiter on the driver), lowered by x-ratelimit-* headers; 0 = off.
    tokens_per_minute: int = Field(0, ge=0)  # TPM budget: prompt estimate (chars/4) + max_tokens per request
    requests_per_minute: int = Field(0, ge=0)  # RPM budget
    # USD per 1k tokens, synchronous calls (dry-run estimate, summaries, the report's ledger).
    price_prompt_per_1k: float = 0.00015
    price_cached_prompt_per_1k: float = 0.000075  # prompt tokens the provider served from its prompt cache
    price_completion_per_1k: float = 0.0006
    # USD per 1k tokens through the Batch API (labeling.backend=openai_batch).
    batch_price_prompt_per_1k: float = 0.000075
    batch_price_cached_prompt_per_1k: float = 0.0000375
    batch_price_completion_per_1k: float = 0.0003


class EmbeddingLabelConf(Section):
    """Offline zero-shot labeler: all-MiniLM-L6-v2 similarity of product names to persona descriptions."""

    # Softmax temperature turning an item's similarities into votes, in standard deviations of each
    # persona's similarity over the catalogue (1 = one standard deviation counts e-fold).
    temperature: float = 1.0
    # Weight, in items, of the all-personas moments each persona's catalogue mean/std is shrunk to
    # (a catalogue of a few items cannot tell hubs apart, so it falls back to raw cosines).
    hubness_prior_items: int = Field(20, ge=0)
    weight: Literal["log_quantity", "quantity", "count"] = "log_quantity"
    relative_threshold: float = 0.5  # keep personas scoring >= this x the best persona's score
    min_similarity: float = 0.1  # mean best cosine below this: Unrepresentable
    # Log-score added per standard deviation of a customer's price / basket / cadence measure to the
    # personas whose descriptions call for it (labeling.signals); 0.5 assumes a medium effect
    # (Cohen's d = 0.5) of being such a persona on the measure. 0 uses product names only.
    signal_weight: float = Field(0.5, ge=0)
    batch_size: int = 64
    partitions: int = 2


class RecordedConf(Section):
    """Replay labels another LLM already gave (e.g. the paper's GPT-4 labels)."""

    path: str | None = None  # JSON {"<id>": [persona_idx, ...]}; ids absent from it are Unrepresentable
    table: str | None = None  # or a table with the id column and ``persona_idx array<int>``
    model: str | None = None  # written to the ``model`` column; default "recorded:<file or table>"
    item_path: str | None = None  # the same for item labels (GPLR's item signal)
    item_table: str | None = None


class SelectionConf(Section):
    mode: Literal["all", "sample", "table"] = "sample"
    size: int = 200  # sample size
    table: str | None = None  # mode=table: a table with the id column (user_idx / item_idx)
    seed: int = 0


class BatchConf(Section):
    """The OpenAI Batch API (labeling.backend=openai_batch): JSONL files, half the price, a 24 h window."""

    max_lines: int = Field(50_000, ge=1)  # requests per batch (the API's limit: 50,000)
    max_bytes: int = Field(200_000_000, ge=1000)  # bytes per input file (the API's limit: 200 MB)
    completion_window: str = "24h"
    poll_initial_s: float = Field(5.0, gt=0)  # first status poll; the interval doubles up to poll_max_s
    poll_max_s: float = Field(300.0, gt=0)
    # A run waits this long for its batches, then stops with BatchesPending; a rerun resumes the
    # same batches (ids in the label_batches table) instead of submitting them again.
    wait_s: float = Field(86_400.0, ge=0)
    dir: str = "data/labels_batches"  # input/output JSONL files; on a cluster storage both Python and Spark see


class PersonaGenerationConf(Section):
    """Persona-set generation (paper App. B): sampled histories -> candidate personas -> merged set."""

    # merge: one sample cut into groups, candidates per group, one merge call (cheap);
    # paper: App. B's three steps and Fig. 2 prompts (candidate_prompts x fresh samples ->
    # refine_prompts x sets_per_refine sets -> final set), see conf/paper.yaml.
    method: Literal["merge", "paper"] = "merge"
    sample_users: int = 200  # merge: users sampled in all
    histories_per_prompt: int = Field(20, ge=1)  # users per candidate prompt (paper: 100)
    candidates_per_prompt: int = Field(10, ge=1)  # personas each candidate prompt proposes (paper: 20)
    candidate_prompts: int = Field(40, ge=1)  # paper: step-1 prompts, each with its own random users
    refine_prompts: int = Field(8, ge=1)  # paper: step-2 prompts
    sets_per_refine: int = Field(5, ge=1)  # paper: step-1 sets drawn at random into each step-2 prompt
    dataset: str = "Market Basket Analysis (MBA)"  # paper: how the step-1 prompt names the dataset
    target_size: int = 20
    title: str = "generated"
    output: str = "data/personas/generated.yaml"
    seed: int = 0


class LabelingConf(Section):
    # who answers: offline embeddings, an LLM endpoint (synchronous calls or the Batch API), or recorded answers
    backend: Literal["embedding", "openai", "openai_batch", "recorded"] = "embedding"
    max_personas: int = 5  # personas one answer may name
    history_tokens: int = 1500  # token budget of one serialized history (most frequent items first)
    max_name_chars: int = 80  # product names are untrusted: longer ones are cut
    # template name under resources/prompts (user_v1; paper_v1 = the paper's Fig. 3 prompt), or a path to a YAML file
    user_prompt: str = "user_v1"
    item_prompt: str = "item_v1"
    chunk_size: int = 5000  # entities labeled and committed to the cache table per Spark job
    # Every paid answer is appended here the moment it arrives, and recovered on the next run.
    # On a cluster use storage both Python and Spark see (e.g. a /Volumes/... path).
    journal_dir: str = "data/labels_journal"
    retry_errors: bool = True  # a rerun labels again entities whose cached row is an error
    dry_run: bool = False  # print estimated tokens and cost, call nothing
    progress_interval_s: float = 10.0
    users: SelectionConf = Field(default_factory=SelectionConf)
    items: SelectionConf = Field(default_factory=lambda: SelectionConf(mode="all"))
    openai: OpenAIConf = Field(default_factory=OpenAIConf)
    batch: BatchConf = Field(default_factory=BatchConf)
    embedding: EmbeddingLabelConf = Field(default_factory=EmbeddingLabelConf)
    recorded: RecordedConf = Field(default_factory=RecordedConf)
    generate: PersonaGenerationConf = Field(default_factory=PersonaGenerationConf)


class SegmentConf(Section):
    """Segmentation and robustness (paper §7.4): one-hot personas or RFM -> PCA -> L2 -> KMeans."""

    ks: list[int] = Field(default_factory=lambda: [5, 15, 25, 35])
    pca_components: int = 3
    rfm_buckets: int = 10  # quantile buckets per R, F and M
    max_iter: int = 20
    seed: int = 42
    top_personas: int = 3  # dominant personas named per segment
    top_items: int = 5  # distinctive items named per segment
    # Robustness labels each compared customer twice with labeling.backend (paid with an LLM):
    # compare a seeded sample of this many customers; None = all.
    robustness_customers: int | None = Field(None, ge=1)


class ReportConf(Section):
    path: str = "data/report/index.html"  # PNG figures are written next to it, and embedded in it
    k: int | None = None  # segmentation shown in detail; None: the k with the best persona silhouette
    max_points: int = 3000  # users sampled for the segment projection plots
    top_personas: int = 20  # personas shown in the persona bar chart / heat map (most frequent)


class RecommendConf(Section):
    """Graph recommender (LGCN / LGCN3 / A-LGCN3 / MF / LightGCN) and persona cold start."""

    export_dir: str = "data/recommend/export"  # the directory export writes and train reads
    model_dir: str = "data/recommend/models"  # <model>-seed<seed>/embeddings.npz + run.json
    eigen_cache_dir: str = "data/recommend/eigen_cache"  # eigenvectors per graph hash
    model: Literal["mf", "lightgcn", "lgcn", "lgcn3", "algcn3"] = "lgcn3"
    seeds: list[int] = Field(default_factory=lambda: [0])
    dim: int = 64
    eigen_k: int = 128  # LGCN: eigenvectors of the smallest Laplacian eigenvalues
    lightgcn_layers: int = 3
    lr: float = 0.01  # Adam; 0.001 barely moves in the demo's few epochs
    reg: float = 1e-4  # L2 on the batch's ego embeddings
    batch_size: int = 2048
    max_epochs: int = 10  # laptop demo; the benchmark uses more
    patience: int = 3  # evaluations without validation improvement before stopping
    eval_every: int = 1
    val_fraction: float = 0.1  # carved from training edges for early stopping
    split_seed: int = 0  # the validation split is fixed across training seeds
    ks: list[int] = Field(default_factory=lambda: [2, 5, 10, 20, 50, 100])
    decorrelation_weight: float = 0.1  # alpha of A-LGCN3
    persona_edge_weight: float = 1.0  # multiplier of user/item-persona edges in the LGCN3 graph
    persona_weights: Literal["binary", "score"] = "binary"  # export-tripartite: edge weight 1 or the persona score
    max_persona_rank: int | None = None  # export-tripartite: keep a user's personas up to this rank
    device: str = "auto"  # auto: cuda when available
    amp: bool = False  # bf16 autocast (GPU)
    progress: bool = True  # a progress bar per epoch
    cold_start_k: int = 20  # items per new customer / customers per new item
    audience_activity_exponent: float = 0.5  # new-item audiences: persona purchase share x activity^this
    user_personas_table: str = "personas"  # export-tripartite: user labels (reference_personas = the paper's GPT-4 labels)
    declared_personas_table: str = "declared_personas"  # cold-start: personas customers chose at sign-up


class GPLRConf(Section):
    budget: float = Field(0.05, gt=0)  # < 1: fraction of users; >= 1: number of users answered by the LLM
    rounds: int = Field(4, ge=1)  # T: round 1 random, rounds 2..T Diversity-Uncertainty
    sampling: Literal["du", "random"] = "du"  # du: Diversity-Uncertainty rounds; random: one random draw
    seed: int = 0
    assignment: Literal["learned", "topk"] = "learned"  # topk = the paper's fixed top-k of Ψ
    top_k: int = Field(5, ge=1)  # personas per user with assignment=topk
    max_personas: int = Field(8, ge=1)  # learned: upper bound of personas per user
    cv_folds: int = Field(4, ge=2)  # cross-fitting folds over the prototypes
    max_train_users: int = Field(20_000, ge=10)  # prototypes used to fit the assignment model
    l2: float = Field(1.0, ge=0)  # ridge penalty of the learned assignment model
    item_signal: bool = True  # label items with the LLM too and use them as a second signal
    calibration_bins: int = Field(10, ge=2)  # reliability bins of the held-out (cross-fitted) probabilities


class RefreshConf(Section):
    """What the gplr stage records for the people who consume a monthly refresh (see persona_spark.refresh)."""

    reasons: bool = True  # write persona_reasons (the few products / labelled neighbours behind each row)
    reason_items: int = Field(3, ge=1)  # products kept per (customer, persona) row
    reason_neighbours: int = Field(3, ge=1)  # labelled neighbours kept per row
    # Neighbours are traced through a row's top trace_items products and, per product and persona,
    # its trace_buyers strongest labelled buyers: bounded work per row, exact when nothing is cut.
    trace_items: int = Field(20, ge=1)
    trace_buyers: int = Field(20, ge=1)  # labelled buyers followed per (product, persona) when tracing neighbours
    catalog_products: int = Field(5, ge=1)  # top and distinctive products per persona in persona_catalog


AUDIENCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class AudienceSpec(Section):
    name: str = Field(pattern=AUDIENCE_NAME)  # letters, digits, _ . - (it names tables rows and export paths)
    query: str  # boolean over persona names: & (and), | (or), ! (not), parentheses; "quotes" for odd names
    # Optional export for activation tools: a path or URI; {audience} and {run_id} are filled in.
    export_path: str | None = None
    export_format: Literal["csv", "parquet"] = "csv"


class AudienceConf(Section):
    """Audiences: the customers matching a boolean query over persona names, kept per run with their changes."""

    # One audience from the command line (--set audience.name=... --set audience.query=...) ...
    name: str | None = Field(None, pattern=AUDIENCE_NAME)
    query: str | None = None  # e.g. "Pet Lover & !Bargain Hunter" (& and, | or, ! not, parentheses)
    export_path: str | None = None  # members as CSV/Parquet at this path or URI ({root}, {audience}, {run_id} filled in)
    export_format: Literal["csv", "parquet"] = "csv"  # format of export_path
    # ... or, when name/query are unset, every audience defined here (the bundle runs these after each refresh).
    defined: list[AudienceSpec] = Field(default_factory=list)

    def selected(self) -> list[AudienceSpec]:
        """The audiences a run of the audience stage exports: the one given, else every defined one."""
        if self.name is not None or self.query is not None:
            if self.name is None or self.query is None:
                raise ValueError("audience: set both audience.name and audience.query (or neither, to run audience.defined)")
            return [AudienceSpec(name=self.name, query=self.query, export_path=self.export_path,
                                 export_format=self.export_format)]
        if not self.defined:
            raise ValueError("audience: no audience given: set audience.name and audience.query, or list audience.defined")
        return list(self.defined)


class EvaluateConf(Section):
    # (user_idx | customer_id, persona_idx) rows to score against: the GPT-4 labels of the paper
    # split (reference_personas) or the generator's planted personas.
    reference_table: str = "planted_personas"
    baseline_k: int = 5


# Run locations derived from ``Config.root`` unless set explicitly: (section path, field, location under root).
RUN_LOCATIONS = (
    ("tables", "root", "tables"),
    ("spark", "checkpoint_dir", "checkpoints"),
    ("labeling", "journal_dir", "labels_journal"),
    ("labeling.generate", "output", "personas/generated.yaml"),
    ("report", "path", "report/index.html"),
    ("recommend", "export_dir", "recommend/export"),
    ("recommend", "model_dir", "recommend/models"),
    ("recommend", "eigen_cache_dir", "recommend/eigen_cache"),
)


class Config(Section):
    # One root per deployment (a path, s3a://bucket/prefix, /Volumes/<catalog>/<schema>/<volume>): every run
    # location in RUN_LOCATIONS that is not set explicitly lives under it.
    root: str = "data"
    personas: str = str(DEFAULT_PERSONAS)  # persona set R: a YAML/JSON file of names + descriptions
    spark: SparkConf = Field(default_factory=SparkConf)
    tables: TablesConf = Field(default_factory=TablesConf)
    ingest: IngestConf = Field(default_factory=IngestConf)
    graph: GraphConf = Field(default_factory=GraphConf)
    generate: GenerateConf = Field(default_factory=GenerateConf)
    affinity: AffinityConf = Field(default_factory=AffinityConf)
    gplr: GPLRConf = Field(default_factory=GPLRConf)
    evaluate: EvaluateConf = Field(default_factory=EvaluateConf)
    labeling: LabelingConf = Field(default_factory=LabelingConf)
    segment: SegmentConf = Field(default_factory=SegmentConf)
    report: ReportConf = Field(default_factory=ReportConf)
    recommend: RecommendConf = Field(default_factory=RecommendConf)
    refresh: RefreshConf = Field(default_factory=RefreshConf)
    audience: AudienceConf = Field(default_factory=AudienceConf)

    @model_validator(mode="after")
    def _derive_locations(self) -> "Config":
        """Fill run locations from ``root``; make plain paths absolute so executors (whose working
        directory differs) see the driver's; switch on hadoop-aws when anything is on s3a://."""
        for section_path, field, relative in RUN_LOCATIONS:
            section = self
            for part in section_path.split("."):
                section = getattr(section, part)
            if field not in section.model_fields_set:
                setattr(section, field, storage.join(self.root, relative))
            setattr(section, field, storage.absolute(getattr(section, field)))
        if "hadoop_aws" not in self.spark.model_fields_set:
            self.spark.hadoop_aws = any(storage.scheme(loc) in storage.S3_SCHEMES for loc in self.run_locations().values())
        return self

    def run_locations(self) -> dict[str, str]:
        """``section.field -> location`` of every run location (after derivation)."""
        out = {}
        for section_path, field, _ in RUN_LOCATIONS:
            section = self
            for part in section_path.split("."):
                section = getattr(section, part)
            out[f"{section_path}.{field}"] = getattr(section, field)
        return out


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


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file's sections; ``extends: other.yaml`` (relative to the file) is loaded first and overridden."""
    if path.resolve() in seen:
        raise ValueError(f"{path}: 'extends' loops back to {seen[0]}")
    loaded = yaml.safe_load(path.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ValueError(f"{path}: top level must be a mapping of sections")
    tree = dict(loaded or {})
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    return _merge(_load_tree(path.parent / parent, (*seen, path.resolve())), tree)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    tree: dict[str, Any] = _load_tree(Path(path)) if path is not None else {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, key, value)
    return Config.model_validate(tree)


# ---- the configuration reference (docs/configuration.md is generated from this file) ----------

def _field_comments() -> dict[tuple[str, str], str]:
    """(class, field) -> the comment written beside the field, or on the lines right above it."""
    import ast
    import io
    import tokenize

    source = Path(__file__).read_text()
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("# ").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    own_line = {n for n in comments if lines[n - 1].lstrip().startswith("#")}
    found = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    above, line = [], stmt.lineno - 1
                    while line in own_line:
                        above.insert(0, comments[line])
                        line -= 1
                    text = " ".join(above + ([comments[stmt.lineno]] if stmt.lineno in comments else []))
                    found[(node.name, stmt.target.id)] = text
    return found


def config_reference() -> str:
    """Every key of ``Config`` with its type, default and meaning, as Markdown tables per section."""
    comments = _field_comments()

    def rows(defaults: BaseModel, prefix: str) -> list[str]:
        out = []
        model = type(defaults)
        for name, info in model.model_fields.items():
            key = f"{prefix}{info.alias or name}"
            annotation = info.annotation
            default = getattr(defaults, name)
            if isinstance(default, BaseModel):
                out += rows(default, key + ".")
                continue
            if name == "personas" and model is Config:
                default = "the packaged demo_shop.yaml"
            kind = str(annotation).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("|", "\\|")
            kind = kind.replace("__main__.", "").replace("persona_spark.config.", "")
            meaning = comments.get((model.__name__, name), "").replace("|", "\\|")
            out.append(f"| `{key}` | `{kind}` | `{default!r}` | {meaning} |")
        return out

    lines = ["# Configuration reference", "",
             "Generated from `persona_spark/config.py` (`python -m persona_spark.config`). Every key is optional;",
             "set them in a YAML file (`--conf`) or per run with `--set key=value`. Unknown keys are errors.", ""]
    defaults = Config.model_construct()  # the sections' own defaults, not this machine's absolute paths
    for name in Config.model_fields:
        section = getattr(defaults, name)
        if isinstance(section, BaseModel):
            doc = (type(section).__doc__ or "").strip().splitlines()
            lines += [f"## `{name}`", ""] + ([doc[0], ""] if doc else [])
            lines += ["| key | type | default | meaning |", "|---|---|---|---|", *rows(section, name + "."), ""]
    lines += ["## top level", "", "| key | type | default | meaning |", "|---|---|---|---|",
              *[r for r in rows(defaults, "") if r.startswith("| `personas`")], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference(), end="")
