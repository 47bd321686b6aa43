"""Runs that cannot leak or collide: the API key never reaches a table, a file, a log line or the output, even when
the provider echoes it; a second run on the same tables stops at once naming the run that holds them; a Delta
write that loses to a concurrent one ends in one line."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from persona_spark.cli import main, user_error_message
from persona_spark.config import TablesConf
from persona_spark.tables import storage
from persona_spark.tables.lease import Lease
from persona_spark.tables.store import TableStore
from persona_spark.testing.openai_server import BatchFaults, LoopbackChatServer, Reply, answer, entity_ids
from tests.conftest import user_error_line

KEY_ENV = "PS_CANARY_KEY"
EDGES_SCHEMA = "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, split string"
ITEMS = ["Dry dog food 10kg", "Cat litter 5l", "Tomato seeds", "Yoga mat", "Chef knife", "Espresso beans"]


def write_tiny_graph(store: TableStore, users: int = 9) -> None:
    """``edges`` and ``items`` of a tiny shop: user u bought items u % 6 and (u + 1) % 6."""
    ts = datetime(2024, 1, 1)
    rows = [(u, (u + k) % len(ITEMS), 1 + k, 2, ts, ts, "train") for u in range(users) for k in (0, 1)]
    store.write_table(store.spark.createDataFrame(rows, EDGES_SCHEMA), "edges")
    items = [(i, f"SKU{i}", name, 2) for i, name in enumerate(ITEMS)]
    store.write_table(store.spark.createDataFrame(items, "item_idx int, item_id string, item_name string, degree int"),
                      "items")


def careless_provider(personas):
    """Users 0, 3, 6 get 401, users 1, 4, 7 a 500 (the server quotes the Authorization header in both); the rest
    an answer."""
    def respond(body: dict, _n: int) -> Reply:
        ids = entity_ids(body)
        kind = int(ids[0]) % 3 if ids[0].isdigit() else 2
        if kind == 0:
            return Reply(status=401)
        if kind == 1:
            return Reply(status=500)
        return Reply(content=answer(ids, lambda i: [personas.names[int(i) % len(personas)]]))

    return respond


class Watcher:
    """Every version of every file under some folders while a run lives (journal and downloaded batch files
    exist for a few seconds only)."""

    def __init__(self, *folders: Path):
        self.folders, self.seen = folders, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            for folder in self.folders:
                for path in folder.rglob("*") if folder.exists() else []:
                    try:
                        self.seen.setdefault(str(path), set()).add(path.read_bytes())
                    except (IsADirectoryError, FileNotFoundError):
                        continue

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def readable(path: Path) -> bytes:
    """A file's bytes, and for Parquet its decoded values too (compression could hide a string)."""
    data = path.read_bytes()
    if path.suffix == ".parquet":
        data += json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
    return data


def test_the_key_never_reaches_a_table_a_file_a_log_or_the_output(spark, personas, tmp_path, monkeypatch, capfd, caplog):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_ENV, canary)
    root = tmp_path / "run"
    write_tiny_graph(TableStore(spark, TablesConf(root=str(root / "tables"))))
    log_file = root / "run.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    caplog.set_level(logging.DEBUG, logger="persona_spark")
    with LoopbackChatServer(careless_provider(personas), echo_authorization=True) as server:
        server.batch_faults = BatchFaults(line_fault=lambda cid: "failed" if int(cid.split("-")[0]) % 2 else None)
        conf = root / "conf.yaml"
        conf.write_text(yaml.safe_dump({
            "root": str(root),
            "labeling": {
                "backend": "openai", "users": {"mode": "all"}, "progress_interval_s": 1,
                "openai": {"base_url": server.base_url, "model": "loopback-model", "api_key_env": KEY_ENV,
                           "max_attempts": 1, "partitions": 1, "concurrency": 1, "timeout_s": 10},
                "batch": {"poll_initial_s": 0.05, "poll_max_s": 0.2},
            },
            "report": {"allow_partial": True},
        }))
        try:
            with Watcher(root / "labels_journal", root / "labels_batches") as watcher:
                assert main(["label-users", "--conf", str(conf)]) == 0
                assert main(["label-items", "--conf", str(conf), "--set", "labeling.backend=openai_batch"]) == 0
                assert main(["report", "--conf", str(conf)]) == 0
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
        assert {401, 500} <= set(server.statuses) and server.batches  # the key was echoed, over both APIs
    output = capfd.readouterr()

    # no file the run wrote, in no version the watcher saw, and nothing printed holds the key or a piece of it
    files = [p for p in root.rglob("*") if p.is_file()]
    assert log_file in files and (root / "report" / "index.html") in files
    assert any("_delta_log" in str(p) for p in files) and any(p.suffix == ".parquet" for p in files)
    pieces = (canary, canary[-16:])
    leaks = [str(p.relative_to(root)) for p in files if any(piece.encode() in readable(p) for piece in pieces)]
    leaks += [str(Path(p).relative_to(root)) for p, versions in watcher.seen.items()
              if any(piece.encode() in v for v in versions for piece in pieces)]
    leaks += [name for name, text in (("stdout", output.out), ("stderr", output.err)) if any(p in text for p in pieces)]
    assert not leaks, f"the key reached {len(leaks)} places: {leaks}"

    # the run saw the echoes, and kept them as redacted errors
    users = {r["user_idx"]: r for r in spark.read.format("delta").load(str(root / "tables" / "user_labels")).collect()}
    assert users[0]["status"] == "error" and "Incorrect API key provided: [redacted]" in users[0]["error"]
    assert users[1]["status"] == "error" and "HTTP 500" in users[1]["error"] and "[redacted]" in users[1]["error"]
    assert users[2]["status"] == "ok"
    items = {r["item_idx"]: r for r in spark.read.format("delta").load(str(root / "tables" / "item_labels")).collect()}
    assert "[redacted]" in items[1]["error"] and items[2]["status"] == "ok"  # item 1's line failed in the batch
    journal = [p for p in watcher.seen if p.endswith(".jsonl") and "labels_journal" in p]
    batch_errors = [p for p in watcher.seen if p.endswith("errors.jsonl")]
    assert journal and batch_errors, "the watcher saw no journal or batch error file: nothing was checked"
    assert any(b"[redacted]" in v for p in batch_errors for v in watcher.seen[p])


# ---- one writer at a time ----------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_tables_stops_before_any_llm_call_naming_the_holder(spark, personas, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback-lease")
    lease_at = str(tmp_path / "tables" / "_lease")
    with LoopbackChatServer(careless_provider(personas)) as server, Lease(lease_at, 600, "gplr", "run-first"):
        status = main(["gplr", "--set", f"root={tmp_path}", "--set", "labeling.backend=openai",
                       "--set", f"labeling.openai.base_url={server.base_url}", "--set", f"labeling.openai.api_key_env={KEY_ENV}"])
        line = user_error_line(capsys)
        assert status == 2 and server.request_count == 0
        assert "in use by persona-spark gplr (run run-first, pid" in line and lease_at in line
        assert json.loads(Path(lease_at).read_text())["run_id"] == "run-first"  # the refused run left it alone


def test_a_stale_lease_is_taken_over_and_released_when_the_stage_fails(spark, tmp_path, capsys):
    lease_at = tmp_path / "tables" / "_lease"
    lease_at.parent.mkdir(parents=True)
    expired = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat(timespec="seconds")
    lease_at.write_text(json.dumps({"host": "gone-host", "pid": 1, "run_id": "run-crashed", "stage": "gplr",
                                    "started": expired, "expires": expired}))
    assert main(["build-graph", "--set", f"root={tmp_path}"]) == 2
    assert "'transactions' does not exist" in user_error_line(capsys)  # the stage ran: the lease was taken over
    assert not lease_at.exists() and not storage.exists(f"{lease_at}.taken-run-crashed")


def test_a_delta_write_that_lost_to_a_concurrent_one_is_one_line(spark, store):
    """A real conflict: a transaction reads the table, another run overwrites it, the first commits."""
    rows = spark.createDataFrame([(1, "a")], "id int, name string")
    store.write_table(rows, "conflicted")
    jvm = spark.sparkContext._jvm
    delta_log = jvm.org.apache.spark.sql.delta.DeltaLog.forTable(spark._jsparkSession, store.location("conflicted"))
    txn = delta_log.startTransaction()
    txn.filterFiles()  # this transaction read the whole table
    store.write_table(rows, "conflicted")  # meanwhile another writer replaced it
    operation = getattr(getattr(jvm.org.apache.spark.sql.delta, "DeltaOperations$ManualUpdate$"), "MODULE$")
    nothing = getattr(getattr(jvm.scala.collection.immutable, "Nil$"), "MODULE$")
    started = time.monotonic()
    with pytest.raises(Exception) as lost:
        txn.commit(nothing, operation)
    message = user_error_message(lost.value)
    assert type(lost.value).__name__ == "Py4JJavaError" and time.monotonic() - started < 60
    assert message is not None and "\n" not in message
    assert message.startswith("another writer committed to the same Delta table while this stage wrote it (DELTA_CONCURRENT_")
    assert "this write committed nothing" in message
