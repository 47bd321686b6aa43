"""Typed configuration, loaded once at the edge (CLI, job, notebook) and passed down.

Every knob has a default that runs on a laptop; a YAML file and ``--set section.key=value``
overrides adjust it. Unknown keys are errors so a typo never silently falls back to a default.
"""

from __future__ import annotations

import codecs
import difflib
from datetime import date
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from persona_spark.errors import UserError
from persona_spark.tables import storage

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_PERSONAS = PACKAGE_ROOT / "resources" / "personas" / "demo_shop.yaml"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


Seed = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
UsdPer1k = Annotated[float, Field(ge=0)]


class SparkConf(Section):
    """Settings of a session this package builds; an active one (spark-submit, Databricks) is reused as it is."""

    master: str = Field("local[*]", description="local[n], or spark://host:7077 for a standalone cluster")
    remote: str | None = Field(None, description="Spark Connect instead of a classic session: sc://host:15002 (a running "
                               "server), or local[n] for a Connect server started here with the settings below. Databricks "
                               "serverless sessions are reused as they are.")
    app_name: str = Field("persona-spark", description="the Spark application name")
    shuffle_partitions: int = Field(4, ge=1, description="spark.sql.shuffle.partitions: small machines crawl with Spark's "
                                    "default of 200")
    default_parallelism: int = Field(4, ge=1, description="spark.default.parallelism")
    driver_memory: str = Field("4g", description="spark.driver.memory; in local mode the driver is the whole cluster")
    ui_enabled: bool = Field(False, description="start the Spark web UI")
    checkpoint: Literal["local", "reliable"] = Field("local", description="how every stage pins its intermediate "
                                                     "results (each affinity hop, connected-components round, MERGE "
                                                     "source): local keeps them on the executors (fast, lost with an "
                                                     "executor), reliable writes them to checkpoint_dir (survives a "
                                                     "lost executor)")
    checkpoint_dir: str = Field("data/checkpoints", description="where reliable checkpoints are written; a URI on a "
                                "cluster")
    delta: bool = Field(True, description="load the Delta connector io.delta:delta-spark_2.13 at the installed "
                        "delta-spark's version (resolved from Maven once per machine); false only for the delta-rs "
                        "fallback on a jar-less laptop")
    hadoop_aws: bool = Field(False, description="load org.apache.hadoop:hadoop-aws for s3a:// (switched on when a "
                             "location is s3a://)")
    graphframes: bool = Field(False, description="load GraphFrames (the graph extra): io.graphframes:graphframes-spark4_2.13 "
                              "and its graphx module at the installed graphframes-py's version, resolved from Maven "
                              "like the Delta connector. Where Maven cannot serve them leave this false and name the "
                              "two jar files in extra's spark.jars (Delta still comes from Maven), or put them in jars "
                              "with every other jar")
    packages: list[str] = Field(default_factory=list, description="more Maven coordinates group:artifact:version")
    repositories: list[str] = Field(default_factory=list, description="Maven repositories tried before Maven Central")
    jars: list[str] = Field(default_factory=list, description="jar files or folders of jars: replaces Maven resolution")
    ivy_cache: str = Field("~/.cache/persona-spark/ivy", description="where resolved jars are kept, outside the "
                           "repository")
    warehouse_dir: str | None = Field(None, description="spark.sql.warehouse.dir (catalog-mode tables of a local session; "
                                      "a local Connect server started here uses the temp directory when unset)")
    extra: dict[str, str] = Field(default_factory=dict, description='more Spark settings, e.g. '
                                  '{"spark.executor.memory": "2g"}')


class TablesConf(Section):
    """Where the Delta tables live: under a root folder, or in a catalog."""

    root: str = Field("data/tables", description="local mode: every table is a Delta table under root/<name>")
    catalog: str | None = Field(None, description="catalog mode (Databricks / Unity Catalog): tables are "
                                "catalog.schema.name")
    schema_: str | None = Field(None, alias="schema", description="the schema of catalog mode")
    names: dict[str, str] = Field(default_factory=dict, description='rename individual tables: '
                                  '{"transactions": "sales_lines"}')
    backend: Literal["spark", "delta-rs"] = Field("spark", description="spark: Spark's Delta connector (everywhere). "
                                                  "delta-rs: an explicit fallback for a single machine without the "
                                                  "connector jars; refused when the master is not local or the root is "
                                                  "not a local path")
    lease: bool = Field(True, description="every stage but report takes a lease object beside the tables (created "
                        "only if absent, renewed while the stage runs, removed at its end): a second run on the "
                        "same tables stops at once naming the holder, before anything is read, written or paid for")
    lease_ttl_minutes: float = Field(10.0, gt=0, description="how long a lease lasts unless its run renews it (every "
                                     "third of it): a run killed on another host holds the tables this long; one "
                                     "killed on this host frees them at once")
    lease_location: str | None = Field(None, description="where the lease object lives; null: _lease under tables.root, "
                                       "also in catalog mode, where root is the deployment's storage (e.g. the "
                                       "schema's Volume)")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# Python's name of each encoding Spark's CSV reader takes (spark.sql.legacy.javaCharsets off) -> Spark's name.
CSV_CHARSETS = {"utf-8": "utf-8", "iso8859-1": "iso-8859-1", "ascii": "us-ascii", "utf-16": "utf-16",
                "utf-16-be": "utf-16be", "utf-16-le": "utf-16le", "utf-32": "utf-32"}


class IngestConf(Section):
    """Purchase lines in: where they come from and how their columns map to the canonical ones."""

    source: str | None = Field(None, description="path (csv/parquet/delta) or table name; null = the generated demo data")
    format: Literal["csv", "parquet", "delta", "table"] = Field("csv", description="how to read source")
    preset: Literal["canonical", "online_retail", "instacart"] = Field("canonical", description="column mapping of a "
                                                                       "known source")
    mapping: dict[str, str] = Field(default_factory=dict, description="canonical column -> source column; overrides the "
                                    "preset's mapping")
    products: str | None = Field(None, description="Instacart: the products.csv whose names are joined to the order lines")
    timestamp_format: str | None = Field(None, description="Spark datetime pattern of the source's timestamps; null: "
                                         "Spark's default parsing")
    cancellation_prefix: str | None = Field(None, description='invoice prefix of cancelled lines (Online Retail: "C")')
    mode: Literal["overwrite", "append"] = Field("overwrite", description="overwrite: the source is the full history; "
                                                 "append: the source is a new batch of lines (the same lines ingested "
                                                 "again replace their rows: a batch is a source and its content)")
    encoding: str = Field("utf-8", description="character encoding of a CSV source: utf-8, latin-1 (iso-8859-1), "
                          "us-ascii, utf-16, utf-16be, utf-16le or utf-32 (the ones Spark's CSV reader takes); lines "
                          "with bytes that are not valid in it are quarantined as invalid_encoding and counted in the "
                          "summary")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            known = codecs.lookup(value).name in CSV_CHARSETS
        except LookupError:
            known = False
        if not known:
            raise ValueError(f"encoding {value!r} is not one Spark's CSV reader takes: use one of "
                             f"{', '.join(sorted(set(CSV_CHARSETS.values())))}")
        return value

    @property
    def charset(self) -> str:
        """``encoding`` as Spark's CSV reader names it."""
        return CSV_CHARSETS[codecs.lookup(self.encoding).name]


class GraphConf(Section):
    """The user-item graph built from transactions, and its train/test split."""

    min_user_degree: int = Field(1, ge=1, description="users with fewer distinct items are left out of the graph")
    min_item_degree: int = Field(1, ge=1, description="items with fewer distinct buyers are left out of the graph")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share of each user's items in the test split (seeded "
                                 "hash per pair)")
    split_seed: Seed = Field(42, description="seed of the train/test split's hash")
    write_tiles: bool = Field(True, description="also write the train edges cut into the affinity engine's tiles "
                              "(edge_tiles): gplr and affinity then skip the cut while the edges are unchanged")
    paper_split_dir: str | None = Field(None, description="folder (path or URI) of the paper's index-based split (train.json, "
                                        "test.json, *_personas_gpt4.json), loaded by the load-paper-split stage instead "
                                        "of ingest + build-graph")
    components: bool = Field(True, description="build-graph and load-paper-split report the connected components of the "
                             "train edges (how many, the largest, the users outside it: they only take personas from "
                             "prototypes in their own component)")
    components_algorithm: Literal["auto", "large-star", "graphframes", "graphx"] = Field(
        "auto", description="who finds the components: large-star (the package's own DataFrame rounds: runs "
        "everywhere, Spark Connect included), graphframes or graphx (GraphFrames' connectedComponents with that "
        "algorithm; needs the graph extra and its jars, see spark.graphframes), auto (the fastest of them where "
        "the session has GraphFrames, else large-star)")


class DemoConf(Section):
    """The generated demo shop: customers with planted personas buying from a named catalogue."""

    users: int = Field(2000, ge=1, description="customers of the generated demo shop")
    items: int = Field(600, ge=1, description="products (named, from the packaged catalog)")
    mean_orders_per_user: float = Field(6.0, ge=1, description="mean orders per customer (1 + Poisson)")
    mean_lines_per_order: float = Field(4.0, ge=1, description="mean lines per order (1 + Poisson)")
    personas_per_customer_min: int = Field(1, ge=1, description="fewest personas planted in a customer")
    personas_per_customer_max: int = Field(4, ge=1, description="most personas planted in a customer")
    persona_purity: Fraction = Field(0.75, description="share of lines drawn from a user's personas (rest: popularity)")
    zipf_exponent: float = Field(1.1, ge=0, description="popularity of the catalogue: item of rank r is drawn with "
                                 "weight 1/r^this")
    start_date: str = Field("2024-01-01", description="first day of the generated history (YYYY-MM-DD)")
    days: int = Field(365, ge=1, description="length of the generated history in days")
    seed: Seed = Field(7, description="seed of every random draw of the generator")
    partitions: int = Field(4, ge=1, description="Spark partitions of the generated lines")
    dirty_share: Fraction = Field(0.01, description="lines blemished on purpose so the demo exercises the quarantine")

    @model_validator(mode="after")
    def _persona_range(self) -> DemoConf:
        if self.personas_per_customer_min > self.personas_per_customer_max:
            raise ValueError(f"demo.personas_per_customer_min ({self.personas_per_customer_min}) must not exceed "
                             f"demo.personas_per_customer_max ({self.personas_per_customer_max})")
        return self


class AffinityConf(Section):
    """Persona affinity Ψ: prototype labels propagated along user→item→user walks (paper §5)."""

    ell: int = Field(2, ge=1, le=20, description="ℓ̂: number of user→item→user round trips averaged (each one a "
                     "distributed hop; past a few the walk has mixed and further ones add cost, not signal)")
    eps: float = Field(0.0, ge=0, description="absolute error bound; state entries below eps/(2·ell) are pruned")
    beta: float = Field(0.5, ge=0, description="de-bias exponent for rare personas; 0 disables")
    weighted: bool = Field(False, description="weight edges by n_purchases instead of 1")
    broadcast_max_bytes: int = Field(256 * 2**20, ge=1, description="hop state of at most this many bytes (reached nodes "
                                     "x (4 + 8 x personas)) is broadcast; larger goes through a shuffle join, and no task "
                                     "ever holds a source block larger than this")
    target_blocks: int = Field(0, ge=0, description="node blocks per kind; 0 = max(parallelism, edges / 4M)")
    stack_max_bytes: int = Field(64 * 2**20, ge=0, description="several prototype sets over one graph (GPLR's "
                                 "cross-fitting) share a walk while all users' stacked state (users x (4 + 8 x "
                                 "personas x sets)) fits this; larger states gain nothing from stacking (the products "
                                 "dominate) and each walk would hold sets times the state; 0 = one walk per set")
    state_precision: Literal["float64", "float32"] = Field(
        "float64", description="float type of the propagated states and of the hop products; float32 halves the bytes "
        "every hop ships, checkpoints and multiplies, with every score within a relative (2·ell·(d+S+1) + ell+2)·6e-8 "
        "of the float64 one to first order (d: largest node degree, S: source blocks; docs/concepts/affinity.md has "
        "the exact bound, a worst case); eps must then be 0")

    @model_validator(mode="after")
    def _precision_without_eps(self) -> AffinityConf:
        if self.state_precision == "float32" and self.eps > 0:
            raise ValueError("affinity.eps > 0 is proven for float64 states only: use state_precision float64 or eps 0")
        return self


class TokenPrices(Section):
    """USD per 1,000 tokens of synchronous calls (the dry-run estimate, summaries, the report's ledger)."""

    prompt: UsdPer1k = Field(0.00015, description="USD per 1k prompt tokens, synchronous calls")
    cached_prompt: UsdPer1k = Field(0.000075, description="USD per 1k prompt tokens the provider served from its "
                                    "prompt cache, synchronous calls")
    completion: UsdPer1k = Field(0.0006, description="USD per 1k completion tokens, synchronous calls")


class BatchTokenPrices(Section):
    """USD per 1,000 tokens through the Batch API (labeling.backend=openai_batch)."""

    prompt: UsdPer1k = Field(0.000075, description="USD per 1k prompt tokens through the Batch API")
    cached_prompt: UsdPer1k = Field(0.0000375, description="USD per 1k cached prompt tokens through the Batch API")
    completion: UsdPer1k = Field(0.0003, description="USD per 1k completion tokens through the Batch API")


class OpenAIConf(Section):
    """Any OpenAI-compatible chat endpoint (OpenAI, Azure OpenAI, Databricks serving, vLLM, llama.cpp)."""

    base_url: str | None = Field(None, description="the endpoint's base URL; null: api.openai.com")
    model: str = Field("gpt-4o-mini", description="model / deployment / serving endpoint name")
    api_key_env: str = Field("OPENAI_API_KEY", description="the key is read from this env var on the driver ...")
    secret_scope: str | None = Field(None, description="... or from this Databricks secret scope when the env var is "
                                     "unset")
    secret_key: str | None = Field(None, description="the key's name in secret_scope")
    max_tokens: int = Field(300, ge=1, description="always sent: bounds the price of every answer")
    temperature: float = Field(0.0, ge=0, le=2, description="sampling temperature sent with every request")
    timeout_s: float = Field(60.0, gt=0, description="seconds per attempt")
    max_attempts: int = Field(5, ge=1, le=20, description="429 / 5xx / timeouts / connection errors are retried up to "
                              "this many tries (a failure that persists is a row with its error, not an endless retry)")
    backoff_base_s: float = Field(0.5, ge=0, description="full-jitter exponential backoff when no Retry-After is given")
    backoff_max_s: float = Field(30.0, ge=0, description="longest backoff between two attempts")
    concurrency: int = Field(8, ge=1, description="requests in flight per partition (total = concurrency x partitions "
                             "running at once)")
    partitions: int = Field(2, ge=1, description="global cap on parallel labeling tasks")
    users_per_request: int = Field(1, ge=1, description="> 1: several users (or items) per prompt, ids validated per user")
    json_mode: Literal["json_object", "json_schema", "off"] = Field("json_object", description="how the answer is "
                                                                    "constrained to JSON (off: by the prompt only)")
    tokens_per_minute: int = Field(0, ge=0, description="TPM budget shared by every task of a job (a limiter on the "
                                   "driver, lowered by x-ratelimit-* headers): prompt estimate (chars/4) + max_tokens per "
                                   "request; 0 = off")
    requests_per_minute: int = Field(0, ge=0, description="RPM budget shared like tokens_per_minute; 0 = off")
    prices: TokenPrices = Field(default_factory=TokenPrices, description="USD per 1k tokens, synchronous calls")
    batch_prices: BatchTokenPrices = Field(default_factory=BatchTokenPrices, description="USD per 1k tokens through "
                                           "the Batch API")


class EmbeddingLabelConf(Section):
    """Offline zero-shot labeler: all-MiniLM-L6-v2 similarity of product names to persona descriptions."""

    temperature: float = Field(1.0, gt=0, description="softmax temperature turning an item's similarities into votes, in "
                               "standard deviations of each persona's similarity over the catalogue (1 = one standard "
                               "deviation counts e-fold)")
    hubness_prior_items: int = Field(20, ge=0, description="weight, in items, of the all-personas moments each persona's "
                                     "catalogue mean/std is shrunk to (a catalogue of a few items cannot tell hubs apart, "
                                     "so it falls back to raw cosines)")
    weight: Literal["log_quantity", "quantity", "count"] = Field("log_quantity", description="how much each purchased "
                                                                  "item's vote counts")
    relative_threshold: Fraction = Field(0.5, description="keep personas scoring >= this x the best persona's score")
    min_similarity: float = Field(0.1, ge=-1, le=1, description="mean best cosine below this: Unrepresentable")
    signal_weight: float = Field(0.5, ge=0, description="log-score added per standard deviation of a customer's price / "
                                 "basket / cadence measure to the personas whose descriptions call for it "
                                 "(labeling.signals); 0.5 assumes a medium effect (Cohen's d = 0.5) of being such a "
                                 "persona on the measure; 0 uses product names only")
    idf: bool = Field(True, description="weight each purchased product by its smoothed inverse document frequency over "
                      "the training customers, ln((1 + customers) / (1 + buyers)) + 1, so a product nearly everyone buys "
                      "counts little (false: every product counts by its weight alone)")
    batch_size: int = Field(64, ge=1, description="texts embedded per model call")
    partitions: int = Field(2, ge=1, description="parallel embedding tasks")


class RecordedConf(Section):
    """Replay labels another LLM already gave (e.g. the paper's GPT-4 labels)."""

    path: str | None = Field(None, description='JSON {"<id>": [persona_idx, ...]}; ids absent from it are Unrepresentable')
    table: str | None = Field(None, description="or a table with the id column and persona_idx array<int>")
    model: str | None = Field(None, description='written to the model column; default "recorded:<file or table>"')
    item_path: str | None = Field(None, description="the same as path for item labels (GPLR's item signal)")
    item_table: str | None = Field(None, description="the same as table for item labels")


class SelectionConf(Section):
    """Which entities a labeling stage labels."""

    mode: Literal["all", "sample", "table"] = Field("sample", description="all, a seeded sample, or the ids in a table")
    size: int = Field(200, ge=1, description="sample size")
    table: str | None = Field(None, description="mode=table: a table with the id column (user_idx / item_idx)")
    sample_seed: Seed = Field(0, description="seed of the sample (mode=sample)")


class BatchConf(Section):
    """The OpenAI Batch API (labeling.backend=openai_batch): JSONL files, half the price, a 24 h window."""

    max_lines: int = Field(50_000, ge=1, le=50_000, description="requests per batch (the API's limit: 50,000)")
    max_bytes: int = Field(200_000_000, ge=1000, le=200_000_000, description="bytes per input file (the API's limit: "
                           "200 MB)")
    completion_window: str = Field("24h", description="the Batch API's completion window")
    poll_initial_s: float = Field(5.0, gt=0, description="first status poll; the interval doubles up to poll_max_s")
    poll_max_s: float = Field(300.0, gt=0, description="longest interval between two status polls")
    wait_s: float = Field(86_400.0, ge=0, description="a run waits this long for its batches, then stops with "
                          "BatchesPending; a rerun resumes the same batches (ids in the label_batches table) instead of "
                          "submitting them again")
    dir: str = Field("data/labels_batches", description="input/output JSONL files: any location both Spark and the "
                     "driver reach (default <root>/labels_batches)")


class PersonaGenerationConf(Section):
    """Persona-set generation (paper App. B): sampled histories -> candidate personas -> merged set."""

    method: Literal["merge", "paper"] = Field("merge", description="merge: one sample cut into groups, candidates per "
                                              "group, one merge call (cheap); paper: App. B's three steps and Fig. 2 "
                                              "prompts (candidate_prompts x fresh samples -> refine_prompts x "
                                              "sets_per_refine sets -> final set), see conf/paper.yaml")
    sample_users: int = Field(200, ge=1, description="merge: users sampled in all")
    histories_per_prompt: int = Field(20, ge=1, description="users per candidate prompt (paper: 100)")
    candidates_per_prompt: int = Field(10, ge=1, description="personas each candidate prompt proposes (paper: 20)")
    candidate_prompts: int = Field(40, ge=1, description="paper: step-1 prompts, each with its own random users")
    refine_prompts: int = Field(8, ge=1, description="paper: step-2 prompts")
    sets_per_refine: int = Field(5, ge=1, description="paper: step-1 sets drawn at random into each step-2 prompt")
    dataset: str = Field("Market Basket Analysis (MBA)", description="paper: how the step-1 prompt names the dataset")
    target_size: int = Field(20, ge=1, description="personas in the final set")
    title: str = Field("generated", description="title of the generated persona set")
    output: str = Field("data/personas/generated.yaml", description="where the generated persona set is written")
    seed: Seed = Field(0, description="seed of every random draw of persona generation (sampled histories, sets "
                       "picked for refinement)")


class LabelingConf(Section):
    """Labels for users and items: who answers, with which prompt, cached how."""

    backend: Literal["embedding", "openai", "openai_batch", "recorded"] = Field(
        "embedding", description="who answers: offline embeddings, an LLM endpoint (synchronous calls or the Batch "
        "API), or recorded answers")
    max_personas_per_answer: int = Field(5, ge=1, description="personas one answer may name")
    history_tokens: int = Field(1500, ge=1, description="token budget of one serialized history (most frequent items "
                                "first)")
    max_name_chars: int = Field(80, ge=1, description="product names are untrusted: longer ones are cut")
    user_prompt: str = Field("user_v1", description="template name under resources/prompts (user_v1; paper_v1 = the "
                             "paper's Fig. 3 prompt), or a path to a YAML file")
    item_prompt: str = Field("item_v1", description="the same as user_prompt for item labels")
    chunk_size: int = Field(5000, ge=1, description="entities labeled and committed to the cache table per Spark job")
    journal_dir: str = Field("data/labels_journal", description="every paid answer is appended here the moment it "
                             "arrives, and recovered on the next run; on a cluster use storage both Python and Spark see "
                             "(e.g. a /Volumes/... path)")
    retry_errors: bool = Field(True, description="a rerun labels again entities whose cached row is an error")
    dry_run: bool = Field(False, description="print estimated tokens and cost, call nothing")
    progress_interval_s: float = Field(10.0, gt=0, description="seconds between two progress lines")
    users: SelectionConf = Field(default_factory=SelectionConf)
    items: SelectionConf = Field(default_factory=lambda: SelectionConf(mode="all"))
    openai: OpenAIConf = Field(default_factory=OpenAIConf)
    batch: BatchConf = Field(default_factory=BatchConf)
    embedding: EmbeddingLabelConf = Field(default_factory=EmbeddingLabelConf)
    recorded: RecordedConf = Field(default_factory=RecordedConf)
    persona_generation: PersonaGenerationConf = Field(default_factory=PersonaGenerationConf)


class PaperSegmentConf(Section):
    """The paper protocol's choices (segment.protocol=paper, §7.4 Tables 8 and 9; see persona_spark/segment.py)."""

    year_start: date | None = Field(None, description="first day of the year cut into two six-month periods (ISO date); "
                                   "null: the first day of the month of the earliest transaction")
    silhouette_sample: int = Field(5000, ge=2, description="exact Euclidean silhouette on a seeded sample of at most this "
                                   "many users (every pairwise distance, on the driver)")
    robustness_customers: int = Field(300, ge=1, description="customers sampled for robustness (Table 8: 300)")
    min_transactions: int = Field(10, ge=0, description="robustness keeps customers with more than this many "
                                  "transactions in the year (Table 8: 10)")
    transaction_unit: Literal["lines", "orders"] = Field("lines", description="what a transaction is: an invoice line "
                                                         "(the UCI file's rows) or a distinct order")
    robustness_top_personas: int = Field(3, ge=1, description="robustness compares each customer's this many most "
                                         "dominant personas, as a set (Table 8: 3)")


class SegmentConf(Section):
    """Segmentation and robustness (paper §7.4): one-hot personas or RFM -> PCA -> L2 -> KMeans."""

    protocol: Literal["project", "paper"] = Field("project", description="project: personas and RFM deciles -> PCA -> "
                                                  "L2, Spark's squared-Euclidean silhouette, robustness on each "
                                                  "customer's halves of orders; paper: Tables 8/9 as §7.4 words them "
                                                  "(first six months, raw RFM values, Euclidean silhouette, calendar "
                                                  "half-years, segment.paper)")
    ks: list[Annotated[int, Field(ge=2)]] = Field(default_factory=lambda: [5, 15, 25, 35], min_length=1,
                                                  description="numbers of segments tried")
    pca_components: int = Field(3, ge=1, description="PCA components the features are reduced to")
    rfm_buckets: int = Field(10, ge=2, description="quantile buckets per R, F and M")
    max_iter: int = Field(20, ge=1, le=1000, description="KMeans iterations (one Spark job each)")
    seed: Seed = Field(42, description="seed of every random draw of segmentation and robustness (KMeans, the "
                       "silhouette and robustness samples)")
    personas_per_segment: int = Field(3, ge=1, description="dominant personas named per segment")
    items_per_segment: int = Field(5, ge=1, description="distinctive items named per segment")
    robustness_customers: int | None = Field(None, ge=1, description="robustness labels each compared customer twice "
                                             "with labeling.backend (paid with an LLM): compare a seeded sample of this "
                                             "many customers; null = all (the project protocol; the paper "
                                             "protocol samples segment.paper.robustness_customers)")
    paper: PaperSegmentConf = Field(default_factory=PaperSegmentConf)


class ReportConf(Section):
    """The HTML report."""

    path: str = Field("data/report/index.html", description="PNG figures are written next to it, and embedded in it")
    k: int | None = Field(None, ge=2, description="segmentation shown in detail; null: the k with the best persona "
                          "silhouette")
    max_points: int = Field(3000, ge=1, description="users sampled for the segment projection plots")
    personas_shown: int = Field(20, ge=1, description="personas shown in the persona bar chart / heat map (most "
                                "frequent)")
    allow_partial: bool = Field(False, description="false: a section that fails to render fails the report stage; "
                                "true: the report is written and the failed section shows its error (API keys redacted)")


class RecommendExportConf(Section):
    """export-tripartite: the user-item-persona graph the recommender trains on, written as files."""

    dir: str = Field("data/recommend/export", description="the directory export-tripartite writes and train and "
                     "cold-start read")
    user_personas_table: str = Field("personas", description="user labels (reference_personas = the paper's GPT-4 "
                                     "labels)")
    persona_weights: Literal["binary", "score"] = Field("binary", description="user/item-persona edge weight: 1 or the "
                                                        "persona score")
    max_persona_rank: int | None = Field(None, ge=1, description="keep a user's personas up to this rank; null = all")


class RecommendTrainConf(Section):
    """train: the graph recommender (LGCN / LGCN3 / A-LGCN3 / MF / LightGCN / AFDGCF), one model per seed."""

    model_dir: str = Field("data/recommend/models", description="<model>-seed<seed>/embeddings.npz + run.json")
    eigen_cache_dir: str = Field("data/recommend/eigen_cache", description="eigenvectors per graph hash")
    model: Literal["mf", "lightgcn", "afdgcf", "lgcn", "lgcn3", "algcn3"] = Field("lgcn3", description="the model train fits")
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1, description="one trained model per seed")
    dim: int = Field(64, ge=1, description="embedding dimension")
    eigen_k: int = Field(128, ge=1, description="LGCN: eigenvectors of the smallest Laplacian eigenvalues")
    lightgcn_layers: int = Field(3, ge=1, description="LightGCN: propagation layers")
    lr: float = Field(0.01, gt=0, description="Adam learning rate; 0.001 barely moves in the demo's few epochs")
    reg: float = Field(1e-4, ge=0, description="L2 on the batch's ego embeddings")
    batch_size: int = Field(2048, ge=1, description="training edges per batch")
    max_epochs: int = Field(10, ge=1, description="epochs at most (a laptop demo's; early stopping ends sooner)")
    patience: int = Field(3, ge=1, description="evaluations without validation improvement before stopping")
    eval_every: int = Field(1, ge=1, description="epochs between two validation evaluations")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of training edges carved out for early stopping")
    validation_seed: Seed = Field(0, description="seed of the validation split, the same for every training seed")
    cutoffs: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [2, 5, 10, 20, 50, 100], min_length=1,
                                                       description="cut-offs k of the ranking metrics (recall@k, "
                                                       "ndcg@k, ...)")
    decorrelation_weight: float | None = Field(None, ge=0, description="alpha of AFDGCF's de-correlation loss "
                                               "(models afdgcf and algcn3); null = the model's own: 1e-4 for afdgcf "
                                               "(the AFDGCF authors' LightGCN setting), 0.1 for algcn3")
    persona_edge_weight: float = Field(1.0, ge=0, description="multiplier of user/item-persona edges in the LGCN3 graph")
    device: str = Field("auto", description="torch device; auto: cuda when available")
    amp: bool = Field(False, description="bf16 autocast (GPU)")
    progress: bool = Field(True, description="a progress bar per epoch")


class RecommendColdStartConf(Section):
    """cold-start: recommendations for customers and items without purchases, through their personas."""

    list_size: int = Field(20, ge=1, description="items recommended per new customer, customers per new item")
    audience_activity_exponent: float = Field(0.5, ge=0, description="new-item audiences: persona purchase share x "
                                              "activity^this")
    declared_personas_table: str = Field("declared_personas", description="personas customers chose at sign-up")
    model_uri: str | None = Field(None, description="the trained model from MLflow instead of recommend.train.model_dir: "
                                  "a model URI (runs:/<run_id>/model, models:/<model_id>) or the run id of a train "
                                  "run (the train stage's summary names both)")


class RecommendConf(Section):
    """Graph recommender and persona cold start: export-tripartite, train, cold-start."""

    export: RecommendExportConf = Field(default_factory=RecommendExportConf)
    train: RecommendTrainConf = Field(default_factory=RecommendTrainConf)
    cold_start: RecommendColdStartConf = Field(default_factory=RecommendColdStartConf)


DEFAULT_BUDGET_FRACTION = 0.05


class GPLRConf(Section):
    """GPLR (paper Algorithm 1): LLM labels for a budget of users, propagated to everyone.

    The budget is either ``budget_fraction`` (a share of the users) or ``budget_users`` (a count),
    never both; with neither set it is 5 % of the users.
    """

    budget_fraction: float | None = Field(None, gt=0, le=1, description="LLM budget as a share of the users (0 < f <= "
                                          "1); null with budget_users null: 0.05")
    budget_users: int | None = Field(None, ge=1, description="LLM budget as a number of users answered; excludes "
                                     "budget_fraction")
    rounds: int = Field(4, ge=1, le=100, description="T: round 1 random, rounds 2..T Diversity-Uncertainty (each "
                        "round runs the affinity engine once; the paper uses 10)")
    sampling: Literal["du", "random"] = Field("du", description="du: Diversity-Uncertainty rounds; random: one random "
                                              "draw")
    seed: Seed = Field(0, description="seed of the random draws and of the cross-fitting folds")
    assignment: Literal["learned", "topk"] = Field("learned", description="learned: the cross-fitted assignment model; "
                                                   "topk = the paper's fixed top-k of Ψ")
    top_k: int = Field(5, ge=1, description="personas per user with assignment=topk")
    max_personas_per_user: int = Field(8, ge=1, description="learned: upper bound of personas per user")
    cv_folds: int = Field(4, ge=2, le=20, description="cross-fitting folds over the prototypes (one affinity walk and "
                          "one model fit each)")
    # Why 20k: at |R| = 51 personas it is 20k·51 ≈ 1 M (prototype, persona) rows, over 10k per model weight, so
    # the sample adds little error beside the out-of-fold threshold's grid step; the design matrix, 20k·|R|·(26 + |R|)
    # doubles ≈ 0.6 GB, fits a laptop; and a 5 % budget stays uncapped up to 400k users (Instacart-Full's 206k
    # users give 10k prototypes).
    max_train_users: int = Field(20_000, ge=10, description="cap on the prototypes the assignment model is fitted on: "
                                 "a stratified, seeded sample drawn in Spark when there are more (bounds driver "
                                 "memory)")
    # Why 50: at cv_folds = 4 every fold's model still sees ≥ 37 carriers of each persona (50·3/4; ≈ 10 per fold
    # are held out), and 50·|R| = 2550 at |R| = 51 is an eighth of the default cap.
    min_train_per_persona: int = Field(50, ge=0, description="floor of the capped sample: prototypes carrying each "
                                       "persona kept (all of a rarer one), at most half the cap in all; 0 = a "
                                       "plain uniform sample")
    l2: float = Field(1.0, ge=0, description="ridge penalty of the learned assignment model")
    item_signal: bool = Field(True, description="label items with the LLM too and use them as a second signal")
    item_labels: Literal["all", "prototypes", "edge_share"] = Field(
        "all", description="items labelled for the item signal: all; prototypes: those the LLM-labelled users bought "
        "(after sampling); edge_share: the most bought ones carrying item_edge_share of the train edges. Answers are "
        "cached by item and text either way: an unchanged product is never paid twice")
    item_edge_share: float = Field(0.9, gt=0, le=1, description="item_labels=edge_share: the share of the train edges "
                                   "the labelled items carry")
    calibration_bins: int = Field(10, ge=2, description="reliability bins of the held-out (cross-fitted) probabilities")
    class_balance: float = Field(0.0, ge=0, le=1, description="learned: weigh each persona's carriers in the model's "
                                 "likelihood by (mean persona share / its share) ** this; 0.5 gives rare personas more "
                                 "recall (macro-F1) for a little micro-F1; 0 = off")
    # Why 500: a 95 % interval on micro-F1 narrow enough to alert on (about ±0.012 on the OnlineRetail split, whose
    # users carry five personas each), and 1 % of the budget at a million users (5 %: 50k prototypes). A small
    # shop's budget caps it, so the audit never doubles more than the labelling bill.
    audit_users: int = Field(500, ge=0, description="users drawn at random from those the run did not label (at most "
                             "the run's budget), labelled too and scored against the run's predictions: its agreement "
                             "with the LLM with a 95 % interval (persona_audit); 0 = no audit")
    min_audit_micro_f1: float | None = Field(None, ge=0, le=1, description="quality guard, off when null: a run whose "
                                             "audit micro-F1 upper bound is below this writes its tables, then ends "
                                             "with exit status 3 and one line")

    @model_validator(mode="after")
    def _one_budget(self) -> GPLRConf:
        if self.budget_fraction is not None and self.budget_users is not None:
            raise ValueError(f"set one of gplr.budget_fraction ({self.budget_fraction}) and gplr.budget_users "
                             f"({self.budget_users}), not both")
        return self

    @model_validator(mode="after")
    def _guard_needs_audit(self) -> GPLRConf:
        if self.min_audit_micro_f1 is not None and self.audit_users == 0:
            raise ValueError(f"gplr.min_audit_micro_f1 ({self.min_audit_micro_f1}) needs an audit: set gplr.audit_users "
                             "above 0")
        return self

    def budget_size(self, n_users: int) -> int:
        """The budget as a number of users: ``budget_users``, else the fraction of ``n_users`` (at least 1)."""
        if self.budget_users is not None:
            return self.budget_users
        fraction = DEFAULT_BUDGET_FRACTION if self.budget_fraction is None else self.budget_fraction
        return max(1, round(fraction * n_users))

    def audit_size(self, budget: int) -> int:
        """Users the audit labels: ``audit_users``, at most ``budget``, so the check never costs more than the
        labelling it checks."""
        return min(self.audit_users, budget)


class RefreshConf(Section):
    """What the gplr stage records for the people who consume a monthly refresh (see persona_spark.refresh)."""

    reasons: bool = Field(False, description="gplr writes persona_reasons (the few products / labelled neighbours "
                          "behind each row) for every row: most of the refresh's cost at scale; off, the reasons "
                          "stage writes them for the customers asked")
    explain: list[str] = Field(default_factory=list, description="customer ids the reasons stage explains "
                               "(e.g. --set 'refresh.explain=[c1,c2]'); empty: every row of the latest run")
    reason_items: int = Field(3, ge=1, description="products kept per (customer, persona) row")
    reason_neighbours: int = Field(3, ge=1, description="labelled neighbours kept per row")
    trace_items: int = Field(10, ge=1, description="neighbours are traced through a row's top trace_items products "
                             "(at most trace_items x trace_buyers paths per row; exact when nothing is cut)")
    trace_buyers: int = Field(10, ge=1, description="labelled buyers followed per (product, persona) when tracing "
                              "neighbours (10 x 10 = 100 paths per row; 20 x 20 = 400)")
    catalog_products: int = Field(5, ge=1, description="top and distinctive products per persona in persona_catalog")


AUDIENCE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class AudienceSpec(Section):
    name: str = Field(pattern=AUDIENCE_NAME, description="letters, digits, _ . - (it names table rows and export paths)")
    query: str = Field(description='boolean over persona names: & (and), | (or), ! (not), parentheses; "quotes" for odd '
                       'names ("" inside them for a quote)')
    export_path: str | None = Field(None, description="optional export for activation tools: a path or URI; {root}, "
                                    "{audience} and {run_id} are filled in")
    export_format: Literal["csv", "parquet"] = Field("csv", description="format of export_path")


class AudienceConf(Section):
    """Audiences: the customers matching a boolean query over persona names, kept per run with their changes."""

    name: str | None = Field(None, pattern=AUDIENCE_NAME, description="one audience from the command line (--set "
                             "audience.name=... --set audience.query=...) ...")
    query: str | None = Field(None, description='its query, e.g. "Pet Lover & !Bargain Hunter" (& and, | or, ! not, '
                              "parentheses)")
    export_path: str | None = Field(None, description="members as CSV/Parquet at this path or URI ({root}, {audience}, "
                                    "{run_id} filled in)")
    export_format: Literal["csv", "parquet"] = Field("csv", description="format of export_path")
    defined: list[AudienceSpec] = Field(default_factory=list, description="... or, when name/query are unset, every "
                                        "audience defined here (the bundle runs these after each refresh)")

    def selected(self) -> list[AudienceSpec]:
        """The audiences a run of the audience stage exports: the one given, else every defined one."""
        if self.name is not None or self.query is not None:
            if self.name is None or self.query is None:
                raise UserError("audience: set both audience.name and audience.query (or neither, to run audience.defined)")
            return [AudienceSpec(name=self.name, query=self.query, export_path=self.export_path,
                                 export_format=self.export_format)]
        if not self.defined:
            raise UserError("audience: no audience given: set audience.name and audience.query, or list audience.defined")
        return list(self.defined)


class MLflowConf(Section):
    """MLflow tracking: each gplr run and each trained model as an MLflow run (the mlflow extra)."""

    enabled: bool = Field(True, description="log gplr and train runs to MLflow; without the MLflow package a stage "
                          "logs one warning line and goes on")
    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else the workspace's tracking "
                                     "server on Databricks (databricks), else MLflow's SQLite store in "
                                     "tables.root (sqlite:///<tables.root>/mlflow.db)")
    experiment: str | None = Field(None, description="experiment name; null: persona-spark, or on Databricks the "
                                   "notebook's own experiment (a Databricks job needs a workspace path: the bundle "
                                   "passes the experiment it declares)")


class EvaluateConf(Section):
    """Scoring the personas against a reference on users the run did not label."""

    reference_table: str = Field("planted_personas", description="(user_idx | customer_id, persona_idx) rows to score "
                                 "against: the GPT-4 labels of the paper split (reference_personas) or the generator's "
                                 "planted personas")
    baseline_k: int = Field(5, ge=1, description="personas per user of the popularity baseline")


# Run locations derived from ``Config.root`` unless set explicitly: (section path, field, location under root).
RUN_LOCATIONS = (
    ("tables", "root", "tables"),
    ("spark", "checkpoint_dir", "checkpoints"),
    ("labeling", "journal_dir", "labels_journal"),
    ("labeling.batch", "dir", "labels_batches"),
    ("labeling.persona_generation", "output", "personas/generated.yaml"),
    ("report", "path", "report/index.html"),
    ("recommend.export", "dir", "recommend/export"),
    ("recommend.train", "model_dir", "recommend/models"),
    ("recommend.train", "eigen_cache_dir", "recommend/eigen_cache"),
)


class Config(Section):
    root: str = Field("data", description="one root per deployment (a path, s3a://bucket/prefix, "
                      "/Volumes/<catalog>/<schema>/<volume>): every run location not set explicitly lives under it")
    personas: str = Field(str(DEFAULT_PERSONAS), description="persona set R: a YAML/JSON file of names + descriptions")
    spark: SparkConf = Field(default_factory=SparkConf)
    tables: TablesConf = Field(default_factory=TablesConf)
    ingest: IngestConf = Field(default_factory=IngestConf)
    graph: GraphConf = Field(default_factory=GraphConf)
    demo: DemoConf = Field(default_factory=DemoConf)
    affinity: AffinityConf = Field(default_factory=AffinityConf)
    gplr: GPLRConf = Field(default_factory=GPLRConf)
    evaluate: EvaluateConf = Field(default_factory=EvaluateConf)
    labeling: LabelingConf = Field(default_factory=LabelingConf)
    segment: SegmentConf = Field(default_factory=SegmentConf)
    report: ReportConf = Field(default_factory=ReportConf)
    recommend: RecommendConf = Field(default_factory=RecommendConf)
    refresh: RefreshConf = Field(default_factory=RefreshConf)
    audience: AudienceConf = Field(default_factory=AudienceConf)
    mlflow: MLflowConf = Field(default_factory=MLflowConf)

    @model_validator(mode="after")
    def _derive_locations(self) -> Config:
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


# Keys that name their setting under another key -> that key. An unknown key is looked up here by its longest
# listed prefix (``generate.users`` -> ``demo.users``), so the error says what to write instead.
RENAMED_KEYS = {
    "affinity.checkpoint": "spark.checkpoint",
    "generate": "demo",
    "generate.min_personas": "demo.personas_per_customer_min",
    "generate.max_personas": "demo.personas_per_customer_max",
    "graph.seed": "graph.split_seed",
    "labeling.max_personas": "labeling.max_personas_per_answer",
    "labeling.generate": "labeling.persona_generation",
    "labeling.users.seed": "labeling.users.sample_seed",
    "labeling.items.seed": "labeling.items.sample_seed",
    **{f"labeling.openai.{channel}price_{tokens}_per_1k": f"labeling.openai.{channel}prices.{tokens}"
       for channel in ("", "batch_") for tokens in ("prompt", "cached_prompt", "completion")},
    "gplr.max_personas": "gplr.max_personas_per_user",
    "segment.top_personas": "segment.personas_per_segment",
    "segment.top_items": "segment.items_per_segment",
    "segment.paper.top_personas": "segment.paper.robustness_top_personas",
    "report.top_personas": "report.personas_shown",
    "recommend.export_dir": "recommend.export.dir",
    **{f"recommend.{key}": f"recommend.export.{key}"
       for key in ("user_personas_table", "persona_weights", "max_persona_rank")},
    **{f"recommend.{key}": f"recommend.train.{key}"
       for key in ("model_dir", "eigen_cache_dir", "model", "seeds", "dim", "eigen_k", "lightgcn_layers", "lr", "reg",
                   "batch_size", "max_epochs", "patience", "eval_every", "val_fraction", "decorrelation_weight",
                   "persona_edge_weight", "device", "amp", "progress")},
    "recommend.split_seed": "recommend.train.validation_seed",
    "recommend.ks": "recommend.train.cutoffs",
    "recommend.cold_start_k": "recommend.cold_start.list_size",
    **{f"recommend.{key}": f"recommend.cold_start.{key}"
       for key in ("audience_activity_exponent", "declared_personas_table")},
}


def renamed(key: str) -> str | None:
    """The declared key that took the place of ``key`` (dotted), or None: never renamed, or nothing by that
    name under its new section either."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        new = RENAMED_KEYS.get(".".join(parts[:end]))
        if new is not None:
            new = ".".join([new, *parts[end:]])
            return new if _resolve(new)[1] is not None else None
    return None


def _leaves(key: str, value: Any) -> list[str]:
    """``key`` and, where ``value`` is a mapping, the dotted keys of its leaves instead."""
    if isinstance(value, dict) and value:
        return [leaf for sub, inner in value.items() for leaf in _leaves(f"{key}.{sub}", inner)]
    return [key]


def _moved(leaf: str, key: str, new: str) -> str:
    """What to write instead of ``leaf``, a key at or under the renamed ``key`` (now ``new``)."""
    leaf_new = renamed(leaf)
    return f"{leaf} is now {leaf_new}" if leaf_new else f"{leaf}: unknown key ({key} is now {new})"


def _section_model(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _field(model: type[BaseModel], key: str) -> FieldInfo | None:
    return next((info for name, info in model.model_fields.items() if key in (name, info.alias)), None)


def _resolve(dotted: str, model: type[BaseModel] = Config) -> tuple[list[str], Any | None]:
    """``section.key`` -> (its path, its declared type). Past a mapping field the rest is one key (Spark
    settings have dots: ``spark.extra.spark.executor.memory``) typed as the mapping's values; the type
    is None where no field is declared (the model then rejects the key)."""
    parts, path, annotation = dotted.split("."), [], None
    for i, key in enumerate(parts):
        path.append(key)
        info = _field(model, key) if model is not None else None
        if info is None:
            return path + parts[i + 1:], None
        annotation = info.annotation
        if get_origin(annotation) is dict and i + 1 < len(parts):
            return path + [".".join(parts[i + 1:])], get_args(annotation)[1]
        model = _section_model(annotation)
    return path, annotation


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {'.'.join(keys)}: {key!r} is not a section")
    node[keys[-1]] = value


def _options(annotation: Any) -> list[Any]:
    """The alternatives of a union (``X | None`` -> [X, NoneType]), else the type itself."""
    return list(get_args(annotation)) if get_origin(annotation) in (Union, UnionType) else [annotation]


def _is_text(annotation: Any) -> bool:
    """``str``, a ``Literal`` of strings, or either one or None: a value taken as written, never as YAML."""
    kinds = [a for a in _options(annotation) if a is not type(None)]
    return bool(kinds) and all(
        a is str or (get_origin(a) is Literal and all(isinstance(v, str) for v in get_args(a))) for a in kinds)


def parse_value(annotation: Any, raw: str) -> Any:
    """A ``--set`` value by its field's declared type: text as written (``null`` unsets an optional one),
    anything else (numbers, booleans, lists, mappings, unknown keys) as YAML for the model to validate."""
    if annotation is not None and _is_text(annotation):
        return None if raw in ("null", "~") and type(None) in _options(annotation) else raw
    return yaml.safe_load(raw) if raw.strip() else ""


def parse_override(text: str, model: type[BaseModel] = Config) -> tuple[str, Any]:
    """``key=value`` (``section.key`` of ``model``) -> (key, the value parsed by the key's declared type)."""
    if "=" not in text:
        raise UserError(f"--set {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    return key, parse_value(_resolve(key, model)[1], raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _load_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML file's sections; ``extends: other.yaml`` (relative to the file) is loaded first and overridden."""
    if path.resolve() in seen:
        raise UserError(f"{path}: 'extends' loops back to {seen[0]}")
    if not path.is_file():
        raise UserError(f"config file not found: {path}" + (f" (extended by {seen[-1]})" if seen else ""))
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from error
    if loaded is not None and not isinstance(loaded, dict):
        raise UserError(f"{path}: top level must be a mapping of sections")
    tree = dict(loaded or {})
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    return _merge(_load_tree(path.parent / parent, (*seen, path.resolve())), tree)


def _problem(error: dict) -> str:
    """One validation error as ``key: what is wrong (got value)``; an unknown key with the likely one meant."""
    loc = [str(part) for part in error["loc"]]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        if (new := renamed(key)) is not None:
            return "; ".join(_moved(leaf, key, new) for leaf in _leaves(key, error.get("input")))
        section: type[BaseModel] | None = Config
        for part in loc[:-1]:
            info = section and _field(section, part)
            section = _section_model(info.annotation) if info else None
        known = [info.alias or name for name, info in section.model_fields.items()] if section else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        return f"{key}: unknown key" + (f" (did you mean {'.'.join([*loc[:-1], close[0]])}?)" if close else "")
    message = error["msg"].removeprefix("Value error, ")
    if key and f"{key}." not in message:  # a section's own check names its keys itself
        message = f"{key}: {message}"
    shown = error.get("input")
    return message if isinstance(shown, (dict, list)) or shown is None else f"{message} (got {shown!r})"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """The configuration of a run: defaults, then the YAML file, then each ``--set``; any mistake is a
    :class:`UserError` naming the key."""
    tree: dict[str, Any] = _load_tree(Path(path)) if path is not None else {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_path(tree, _resolve(key)[0], value)
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        raise UserError("config: " + "; ".join(_problem(e) for e in error.errors())) from None


# ---- the configuration reference (docs/reference/configuration.md is generated from this file) ----------

def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return "Literal[" + ", ".join(repr(a) for a in args) + "]"
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


BOUND_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def _bounds(info: FieldInfo) -> str:
    """``>= 1, <= 2`` from the field's numeric constraints."""
    found = []
    for meta in info.metadata:
        for attr, sign in BOUND_SIGNS.items():
            if getattr(meta, attr, None) is not None:
                found.append(f"{sign} {getattr(meta, attr)}")
    return ", ".join(found)


def config_reference() -> str:
    """Every key of ``Config`` with its type, bounds, default and description, as Markdown tables per section."""

    def rows(defaults: BaseModel, prefix: str) -> list[str]:
        out = []
        for name, info in type(defaults).model_fields.items():
            key = f"{prefix}{info.alias or name}"
            default = getattr(defaults, name)
            if isinstance(default, BaseModel):
                out += rows(default, key + ".")
                continue
            if name == "personas" and type(defaults) is Config:
                default = "the packaged demo_shop.yaml"
            kind = _type_name(info.annotation) + (f", {_bounds(info)}" if _bounds(info) else "")
            cells = [f"`{key}`", f"`{kind}`", f"`{default!r}`", info.description or ""]
            out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
        return out

    lines = ["# Configuration reference", "",
             "Generated from the `Field(description=...)` of `persona_spark/config.py` (`python -m persona_spark.config`).",
             "Every key is optional; set them in a YAML file (`--conf`) or per run with `--set key=value` (the value is",
             "read by the key's type: text as written, numbers, booleans and lists as YAML). Unknown keys and values out",
             "of bounds are errors.", ""]
    defaults = Config.model_construct()  # the sections' own defaults, not this machine's absolute paths
    for name in Config.model_fields:
        section = getattr(defaults, name)
        if isinstance(section, BaseModel):
            doc = (type(section).__doc__ or "").strip().splitlines()
            lines += [f"## `{name}`", ""] + ([doc[0], ""] if doc else [])
            lines += ["| key | type | default | meaning |", "|---|---|---|---|", *rows(section, name + "."), ""]
    lines += ["## top level", "", "| key | type | default | meaning |", "|---|---|---|---|",
              *[r for r in rows(defaults, "") if r.startswith(("| `root`", "| `personas`"))], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference(), end="")
