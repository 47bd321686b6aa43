"""``OpenAIBatchLabeler``: the OpenAI Batch API (``labeling.backend: openai_batch``), half the price, nobody waits.

Requests become JSONL lines (``custom_id`` = entity id, history hash and a tag of model + prompt +
persona-set version), rendered by Spark tasks and rolled on the driver into input files of at most
``batch.max_lines`` lines / ``batch.max_bytes`` bytes (streamed, never held in memory). Each file is
uploaded (files API) and submitted as one batch; batches are polled with a doubling interval; output
and error files are downloaded and mapped back line by line *from the input file*, so every
requested entity ends as a cache row: a missing, failed, expired, malformed or duplicated line is an
``status='error'`` row with its reason, which the next run asks again (``retry_errors``).

Every step is recorded in the ``label_batches`` Delta table (one row per state change: uploaded,
submitted, completed/failed/expired/cancelled, collected) *before* the next step starts. A run that
is killed (or stops after ``batch.wait_s``) leaves its batches there; the next run first resumes
them — polling the same batch ids, adopting a batch created from an uploaded file whose id was never
recorded — and only then submits what is still missing, so no line is paid for twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from functools import partial

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from persona_spark import tables
from persona_spark.config import BatchConf, LabelingConf, OpenAIConf
from persona_spark.labeling.base import (
    BoundLabeler,
    CacheKey,
    EntityKind,
    LabelCache,
    entities_of,
    label_schema,
    make_row,
    rows_frame,
    validated,
)
from persona_spark.labeling.client import CallResult, chat_body, completion_result
from persona_spark.labeling.openai_chat import OpenAILabeler, OpenAIWorker
from persona_spark.labeling.prompts import LabelPrompt, error_verdict
from persona_spark.personas import PersonaSet
from persona_spark.redaction import Secret, redact, redact_json_line
from persona_spark.runtime.runs import new_run
from persona_spark.tables import storage

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
LEDGER_TABLE = tables.BATCH_LEDGER
LEDGER_SCHEMA = (
    "submission string, purpose string, cache_tag string, input_sha string, input_path string, lines long, "
    "bytes long, input_file_id string, batch_id string, state string, detail string, output_file_id string, "
    "error_file_id string, ts timestamp"
)
FINISHED = ("completed", "failed", "expired", "cancelled")  # the API's terminal batch statuses
ANSWER_SCHEMA = (
    "custom_id string, status_code int, content string, error string, prompt_tokens long, "
    "cached_prompt_tokens long, completion_tokens long"
)


class BatchesPending(RuntimeError):
    """The run waited ``batch.wait_s`` and stopped; a rerun resumes these batches (nothing resubmitted)."""

    def __init__(self, batch_ids: list[str]):
        super().__init__(f"{len(batch_ids)} batch(es) still running after labeling.batch.wait_s: {batch_ids}; "
                         "rerun the same command to resume polling them (they are not submitted again)")
        self.batch_ids = batch_ids


# ---- lines ------------------------------------------------------------------------------------
def cache_tag(key: CacheKey) -> str:
    return hashlib.sha256(f"{key.model}|{key.prompt_version}|{key.persona_set_version}".encode()).hexdigest()[:10]


def custom_id(entity_id, history_hash: str, tag: str) -> str:
    return f"{entity_id}-{history_hash}-{tag}"


def parse_custom_id(value: str) -> tuple[int, str]:
    entity_id, history_hash, _tag = value.rsplit("-", 2)
    return int(entity_id), history_hash


def request_line(line_id: str, body: dict) -> str:
    return json.dumps({"custom_id": line_id, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False)


def render_partition(worker: OpenAIWorker, tag: str, batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: one JSONL request line per entity (one entity per line)."""
    for pdf in batches:
        lines = []
        for entity in entities_of(pdf, worker.id_col, worker.prompt.format):
            messages = worker.prompt.messages([entity])
            body = chat_body(worker.conf, messages, worker.prompt.response_format(worker.conf.json_mode, False))
            lines.append(request_line(custom_id(entity.id, entity.history_hash, tag), body))
        yield pd.DataFrame({"value": lines})


@dataclass(frozen=True)
class InputFile:
    path: str
    lines: int
    bytes: int
    sha: str


def roll_lines(sources: Iterable[str], folder: str, max_lines: int, max_bytes: int) -> list[InputFile]:
    """Stream JSONL lines into ``folder/input-NNNNN.jsonl`` files of at most ``max_lines`` lines and
    ``max_bytes`` bytes each (the Batch API's per-batch limits). Any location ``storage`` reaches."""
    files: list[InputFile] = []
    handle, digest, count, size = None, None, 0, 0

    def name(i: int) -> str:
        return storage.join(folder, f"input-{i:05d}.jsonl")

    def close() -> None:
        if handle is not None:
            handle.close()
            files.append(InputFile(name(len(files)), count, size, digest.hexdigest()))

    for source in sources:
        with storage.open_input(source) as stream:
            for raw in io.BufferedReader(stream):
                line = raw.rstrip(b"\n") + b"\n"
                if len(line) > max_bytes:
                    raise ValueError(f"one batch request line is {len(line):,} bytes, over labeling.batch.max_bytes={max_bytes:,}")
                if handle is None or count >= max_lines or size + len(line) > max_bytes:
                    close()
                    handle, digest, count, size = storage.open_output(name(len(files))), hashlib.sha256(), 0, 0
                handle.write(line)
                digest.update(line)
                count, size = count + 1, size + len(line)
    close()
    return files


def parse_output_line(line: str) -> dict | None:
    """One line of a batch output or error file -> its custom_id, HTTP status, answer, usage and
    error; None when the line is not valid JSON or names no custom_id (malformed)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("custom_id"), str):
        return None
    response = data.get("response") if isinstance(data.get("response"), dict) else {}
    status = response.get("status_code")
    body = response.get("body")
    parsed = {"custom_id": data["custom_id"], "status_code": int(status) if isinstance(status, int) else None,
              "content": None, "error": None, "prompt_tokens": 0, "cached_prompt_tokens": 0, "completion_tokens": 0}
    if isinstance(data.get("error"), dict) and data["error"]:
        parsed["error"] = f"{data['error'].get('code')}: {str(data['error'].get('message'))[:200]}"
    elif status != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(body.get("error"), dict) else body
        parsed["error"] = f"HTTP {status}: {str(message)[:200]}"
    elif not isinstance(body, dict):
        parsed["error"] = f"response body is not JSON: {str(body)[:200]}"
    else:
        result = completion_result(body, time.monotonic(), 1)
        parsed.update(content=result.content, error=result.error, prompt_tokens=result.prompt_tokens,
                      cached_prompt_tokens=result.cached_prompt_tokens, completion_tokens=result.completion_tokens)
    return parsed


def parse_partition(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    columns = [c.split()[0] for c in ANSWER_SCHEMA.split(", ")]
    for pdf in batches:
        rows = [parse_output_line(v) or {"custom_id": None} for v in pdf["value"]]
        frame = pd.DataFrame(rows, columns=columns)
        text = ["custom_id", "content", "error"]
        # Nulls stay nulls: an all-null text column must not become float NaN, nor an int one float.
        frame[text] = frame[text].astype(object).where(frame[text].notna(), None)
        numeric = [c for c in columns if c not in text]
        frame[numeric] = frame[numeric].astype("Int64")
        yield frame


def missing_reason(batch_id: str, status: str, detail: str | None, malformed: int) -> str:
    if status == "failed":
        return f"batch {batch_id} failed validation: {detail or 'no detail'}"
    if status in ("expired", "cancelled"):
        return f"batch {batch_id} {status} before this request ran"
    note = f" ({malformed} malformed line(s) in its output)" if malformed else ""
    return f"batch {batch_id} ({status}) has no answer line for this request{note}"


def answer_rows(worker: OpenAIWorker, batch_id: str, status: str, detail: str | None, malformed: int,
                batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``mapInPandas`` body: one label row per input line, from its (grouped) answer lines."""
    for pdf in batches:
        rows = []
        for line in pdf.itertuples(index=False):
            entity_id, history_hash = parse_custom_id(line.custom_id)
            tokens = {}
            if pd.isna(line.copies):
                verdict = error_verdict(missing_reason(batch_id, status, detail, malformed))
            else:
                tokens = {c: int(getattr(line, c)) for c in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens")}
                if line.copies > 1:  # which copy is the answer is unknowable: none is guessed
                    verdict = error_verdict(f"batch {batch_id} answered this request {int(line.copies)} times; all answers discarded")
                elif line.content is None:
                    verdict = error_verdict(f"batch {batch_id} ({status}): {line.error or 'empty answer'}")
                else:
                    verdict = worker.prompt.parse(line.content, [entity_id])[entity_id]
                    if line.error and verdict.status == "error":  # e.g. cut at max_tokens
                        verdict = error_verdict(f"{line.error}: {verdict.error}")
            rows.append(make_row(worker.id_col, entity_id, history_hash, worker.key, verdict, attempts=1, channel="batch",
                                 answer=(line.content or "")[:4000] or None, **tokens))
        yield rows_frame(rows, worker.id_col)


def collect_rows(spark, submission: Submission, worker: OpenAIWorker) -> DataFrame:
    """The label rows of one finished batch: the input file's lines left-joined with their answers."""
    answer_files = [f for f in answer_locations(submission) if storage.exists(f)]
    expected = spark.read.text(submission.input_path).select(F.get_json_object("value", "$.custom_id").alias("custom_id"))
    if answer_files:
        # Parsed once for the malformed count and the join below. Cached, not checkpointed: a lost
        # executor's blocks are parsed again from the files (a local checkpoint would be gone).
        answers = spark.read.text(answer_files).mapInPandas(parse_partition, ANSWER_SCHEMA).persist()
        malformed = answers.filter(F.col("custom_id").isNull()).count()
        per_line = answers.filter(F.col("custom_id").isNotNull()).groupBy("custom_id").agg(
            F.count(F.lit(1)).alias("copies"), F.first("status_code").alias("status_code"), F.first("content").alias("content"),
            F.first("error").alias("error"), *[F.sum(c).alias(c) for c in ("prompt_tokens", "cached_prompt_tokens", "completion_tokens")],
        )
    else:
        malformed = 0
        per_line = spark.createDataFrame([], f"{ANSWER_SCHEMA}, copies long")
    joined = expected.join(per_line, "custom_id", "left").select(
        "custom_id", "copies", "content", "error", "prompt_tokens", "cached_prompt_tokens", "completion_tokens"
    )
    fn = partial(answer_rows, worker, submission.batch_id or "(not created)", submission.state, submission.detail, malformed)
    return joined.mapInPandas(fn, label_schema(worker.id_col))


# ---- the ledger of submitted batches (a Delta table, read and written at the edge) ------------
@dataclass(frozen=True)
class Submission:
    submission: str
    purpose: str  # user | item | persona_candidates | persona_merge
    cache_tag: str
    input_sha: str
    input_path: str
    lines: int
    bytes: int
    input_file_id: str | None = None
    batch_id: str | None = None
    state: str = "uploaded"  # uploaded | submitted | completed | failed | expired | cancelled | collected
    detail: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    ts: datetime | None = None  # of the first record: answers committed after it may come from this batch


def submission_dir(sub: Submission) -> str:
    """Where a submission's downloaded answer files live: beside its input file."""
    return storage.join(storage.parent(sub.input_path), sub.submission)


def answer_locations(sub: Submission) -> tuple[str, str]:
    """(output file, error file) of a finished batch, as downloaded."""
    return storage.join(submission_dir(sub), "output.jsonl"), storage.join(submission_dir(sub), "errors.jsonl")


class BatchLedger:
    def __init__(self, cache, table: str = LEDGER_TABLE):
        self.cache = cache  # labeling.LabelCache
        self.table = table

    def record(self, submissions: list[Submission]) -> list[Submission]:
        """Append the new state of ``submissions`` in one commit."""
        if not submissions:
            return []
        now = datetime.now(timezone.utc)
        # detail quotes the provider's messages, which may echo the key
        rows = [{**asdict(s), "detail": s.detail and redact(s.detail), "ts": now} for s in submissions]
        self.cache.append(self.table, self.cache.spark.createDataFrame(rows, LEDGER_SCHEMA))
        return [s if s.ts else replace(s, ts=now) for s in submissions]

    def latest(self, purpose: str, tag: str) -> list[Submission]:
        """Each submission's latest state (one row per batch ever made, so small enough to collect)."""
        ledger = self.cache.read(self.table)
        if ledger is None:
            return []
        rows = ledger.filter((F.col("purpose") == purpose) & (F.col("cache_tag") == tag))
        window = Window.partitionBy("submission")
        latest = (rows.withColumn("first_ts", F.min("ts").over(window))
                  .withColumn("_rank", F.row_number().over(window.orderBy(F.desc("ts")))).filter("_rank = 1"))
        out = []
        for row in latest.orderBy("first_ts", "submission").collect():
            values = row.asDict()
            values["ts"] = values.pop("first_ts")
            values.pop("_rank")
            out.append(Submission(**values))
        return out


# ---- the API ------------------------------------------------------------------------------------
class BatchAPI:
    """files / batches calls through the official client. Creating a batch is never retried blindly:
    a create whose answer got lost is found again by its input file (``find``)."""

    def __init__(self, conf: OpenAIConf, api_key: Secret):
        import openai

        self._client = openai.OpenAI(api_key=api_key.reveal(), base_url=conf.base_url, timeout=conf.timeout_s,
                                     max_retries=max(conf.max_attempts - 1, 0))

    def upload(self, location: str) -> str:
        with storage.open_input(location) as handle:
            return self._client.files.create(file=(location.rsplit("/", 1)[-1], handle), purpose="batch").id

    def create(self, file_id: str, window: str, submission: str):
        return self._client.with_options(max_retries=0).batches.create(
            input_file_id=file_id, endpoint=ENDPOINT, completion_window=window, metadata={"persona_spark": submission}
        )

    def batches_by_input_file(self, scan: int = 500) -> dict:
        """The most recent batches (newest first, at most ``scan``) by their input file id."""
        found = {}
        for i, batch in enumerate(self._client.batches.list(limit=100)):
            if i >= scan:
                break
            found.setdefault(batch.input_file_id, batch)
        return found

    def retrieve(self, batch_id: str):
        return self._client.batches.retrieve(batch_id)

    def download(self, file_id: str, location: str) -> None:
        """The file, line by line, each redacted: an error line may quote the request's Authorization header."""
        with storage.open_output(location) as out:
            for line in self._client.files.content(file_id).iter_lines():
                out.write((redact_json_line(line) + "\n").encode())


def batch_detail(batch) -> str | None:
    errors = getattr(getattr(batch, "errors", None), "data", None) or []
    if errors:
        return "; ".join(f"line {e.line}: {e.code}: {e.message}" for e in errors[:5])[:500]
    counts = getattr(batch, "request_counts", None)
    return f"{counts.completed} completed, {counts.failed} failed of {counts.total}" if counts else None


class BatchRunner:
    """Submits input files, resumes recorded batches, waits for them and downloads their files."""

    def __init__(self, api: BatchAPI, ledger: BatchLedger, conf: BatchConf):
        self.api, self.ledger, self.conf = api, ledger, conf

    def submit(self, files: list[InputFile], purpose: str, tag: str) -> list[Submission]:
        """Upload every file, record them (one commit), then create their batches."""
        pending = [Submission(uuid.uuid4().hex[:12], purpose, tag, f.sha, f.path, f.lines, f.bytes, self.api.upload(f.path))
                   for f in files]
        return self.create(self.ledger.record(pending))

    def create(self, pending: list[Submission]) -> list[Submission]:
        """Create the batches of uploaded files, adopting any a killed run created but never recorded
        (found by input file id); their ids are recorded in one commit before anyone waits."""
        if not pending:
            return []
        existing = self.api.batches_by_input_file()
        created = []
        for sub in pending:
            batch = existing.get(sub.input_file_id) or self.api.create(sub.input_file_id, self.conf.completion_window, sub.submission)
            log.info("batch %s: %d lines (%s bytes) submitted as %s", sub.submission, sub.lines, f"{sub.bytes:,}", batch.id)
            created.append(replace(sub, batch_id=batch.id, state="submitted"))
        return self.ledger.record(created)

    def wait(self, submissions: list[Submission]) -> Iterator[Submission]:
        """Yield each submission once its batch is finished and its files are downloaded; raise
        ``BatchesPending`` after ``wait_s``. (The finished state is recorded with ``collected``: a
        run killed before that polls the finished batch again, which costs nothing.)"""
        waiting = [s for s in submissions if s.state != "uploaded"] + self.create([s for s in submissions if s.state == "uploaded"])
        deadline = time.monotonic() + self.conf.wait_s
        interval = self.conf.poll_initial_s
        while waiting:
            still = []
            for sub in waiting:
                batch = self.api.retrieve(sub.batch_id)
                if batch.status not in FINISHED:
                    still.append(sub)
                    continue
                sub = replace(sub, state=batch.status, detail=batch_detail(batch),
                              output_file_id=batch.output_file_id, error_file_id=batch.error_file_id)
                log.info("batch %s is %s (%s)", sub.batch_id, sub.state, sub.detail)
                self.download(sub)
                yield sub
            waiting = still
            if waiting:
                if time.monotonic() + interval > deadline:
                    raise BatchesPending([s.batch_id for s in waiting])
                time.sleep(interval)
                interval = min(interval * 2, self.conf.poll_max_s)

    def download(self, sub: Submission) -> None:
        for file_id, location in zip((sub.output_file_id, sub.error_file_id), answer_locations(sub)):
            if file_id and not storage.exists(location):
                self.api.download(file_id, f"{location}.part")
                storage.move(f"{location}.part", location)  # a killed download is never read as complete

    def collected(self, sub: Submission) -> None:
        self.ledger.record([replace(sub, state="collected", detail=f"{sub.state}: {sub.detail}")])
        storage.remove_tree(submission_dir(sub))
        storage.remove(sub.input_path)


# ---- the backend ------------------------------------------------------------------------------
class BoundBatchLabeler(BoundLabeler):
    """Users or items through the Batch API; commits each finished batch to the cache table itself."""

    paid = True
    batched = True

    def __init__(self, conf: OpenAIConf, batch: BatchConf, api_key: Secret, prompt: LabelPrompt,
                 persona_set: PersonaSet, cache: LabelCache, kind: EntityKind):
        self.conf, self.batch = conf, batch
        self.key = CacheKey(conf.model, prompt.version, persona_set.version)
        self.worker = OpenAIWorker(conf, api_key, prompt, kind.id_col, self.key)
        self.cache, self.kind, self.table = cache, kind.name, kind.table
        self.tag = cache_tag(self.key)
        self._runner = None

    @property
    def runner(self) -> BatchRunner:
        if self._runner is None:
            self._runner = BatchRunner(BatchAPI(self.conf, self.worker.api_key), BatchLedger(self.cache), self.batch)
        return self._runner

    def resume(self) -> int:
        """Collect every batch an earlier run submitted and did not collect; returns how many."""
        open_ones = [s for s in self.runner.ledger.latest(self.kind, self.tag) if s.state != "collected"]
        if open_ones:
            log.info("resuming %d %s batch(es) of an earlier run: %s", len(open_ones), self.kind, [s.batch_id for s in open_ones])
        self._collect(open_ones)
        return len(open_ones)

    def label_missing(self, todo: DataFrame) -> int:
        """Render, split, submit, wait, collect; returns the number of batches submitted."""
        run = new_run()[0]
        folder = storage.join(self.batch.dir, self.kind, run)
        rendered = storage.join(folder, "rendered")
        todo.mapInPandas(partial(render_partition, self.worker, self.tag), "value string").write.mode("overwrite").text(rendered)
        parts = [p for p in storage.list_files(rendered) if p.rsplit("/", 1)[-1].startswith("part-")]
        files = roll_lines(parts, folder, self.batch.max_lines, self.batch.max_bytes)
        storage.remove_tree(rendered)
        submissions = self.runner.submit(files, self.kind, self.tag)
        self._collect(submissions)
        storage.remove_tree(folder)
        return len(submissions)

    def _collect(self, submissions: list[Submission]) -> None:
        for sub in self.runner.wait(submissions):
            rows = collect_rows(self.cache.spark, sub, self.worker)
            committed = self.cache.read(self.table)
            if committed is not None:  # a run killed after committing this batch: no second copy
                committed = committed.filter(
                    (F.col("channel") == "batch") & (F.col("ts") >= F.lit(sub.ts)) & (F.col("model") == self.key.model)
                    & (F.col("prompt_version") == self.key.prompt_version)
                    & (F.col("persona_set_version") == self.key.persona_set_version)
                )
                keys = [self.worker.id_col, "history_hash"]
                rows = rows.join(committed.select(*keys), keys, "left_anti")
            self.cache.append(self.table, rows)
            log.info("batch %s (%s): rows committed to %s", sub.batch_id, sub.state, self.table)
            self.runner.collected(sub)


class OpenAIBatchLabeler(OpenAILabeler):
    """``OpenAILabeler`` through the Batch API (half the price, answers within the completion window):
    the keyword arguments are the fields of ``labeling.openai``, and ``batch`` those of
    ``labeling.batch`` (a ``BatchConf`` or a dict)."""

    backend = "openai_batch"

    def __init__(self, batch: BatchConf | dict | None = None, **fields):
        super().__init__(**fields)
        if isinstance(batch, BatchConf):
            self.batch = batch
        else:
            self.batch = validated(BatchConf, dict(batch or {}), f"{type(self).__name__} batch")

    def changed(self) -> dict:
        batch = self.batch.model_dump(exclude_defaults=True)
        return {**super().changed(), **({"batch": batch} if batch else {})}

    def bind(self, labeling: LabelingConf, persona_set: PersonaSet, kind: EntityKind, cache: LabelCache) -> BoundBatchLabeler:
        prompt, key = self.prompt_and_key(labeling, persona_set, kind, cache)
        if self.conf.users_per_request > 1:
            raise ValueError("labeling.backend=openai_batch sends one entity per request line: set labeling.openai.users_per_request=1")
        return BoundBatchLabeler(self.conf, self.batch, key, prompt, persona_set, cache, kind)


# ---- driver-side calls (persona-set generation) -----------------------------------------------
def complete_in_batch(cache, conf, api_key: Secret, message_lists: list[list[dict]], purpose: str,
                      response_format: dict | None) -> list[CallResult]:
    """A few chat requests (bounded by configuration) through one batch, in order. A rerun with the
    same requests adopts the batch an interrupted run submitted instead of paying again."""
    lines = [request_line(f"{purpose}-{i}", chat_body(conf.openai, m, response_format)) for i, m in enumerate(message_lists)]
    text = ("\n".join(lines) + "\n").encode()
    sha = hashlib.sha256(text).hexdigest()
    tag = hashlib.sha256(conf.openai.model.encode()).hexdigest()[:10]
    runner = BatchRunner(BatchAPI(conf.openai, api_key), BatchLedger(cache), conf.batch)
    earlier = [s for s in runner.ledger.latest(purpose, tag) if s.input_sha == sha and s.state in ("uploaded", "submitted")]
    if earlier and storage.exists(earlier[-1].input_path):
        sub = earlier[-1]
    else:
        location = storage.join(conf.batch.dir, purpose, uuid.uuid4().hex[:8], "input-00000.jsonl")
        storage.write_bytes(location, text)
        (sub,) = runner.submit([InputFile(location, len(lines), len(text), sha)], purpose, tag)
    (done,) = list(runner.wait([sub]))
    answers: dict[str, list[dict]] = {}
    for location in answer_locations(done):
        if storage.exists(location):
            for line in storage.read_text(location).splitlines():
                parsed = parse_output_line(line)
                if parsed is not None:
                    answers.setdefault(parsed["custom_id"], []).append(parsed)
    results = []
    for i in range(len(message_lists)):
        got = answers.get(f"{purpose}-{i}", [])
        if len(got) != 1:
            reason = missing_reason(done.batch_id, done.state, done.detail, 0) if not got else f"answered {len(got)} times"
            results.append(CallResult(None, 0, 0, 0, 1, reason))
        else:
            a = got[0]
            results.append(CallResult(a["content"], a["prompt_tokens"], a["completion_tokens"], 0, 1, a["error"], a["cached_prompt_tokens"]))
    runner.collected(done)
    return results
