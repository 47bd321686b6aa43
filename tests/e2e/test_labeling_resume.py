"""Kill a labeling job mid-way (SIGKILL to its whole process tree) and rerun: no answer paid twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime

from persona_spark.config import load_config
from persona_spark.labeling import journal as journal_io
from persona_spark.stages import STAGES, RunContext
from persona_spark.testing.openai_server import LoopbackChatServer, Reply, obedient, server_error
from tests.conftest import SMALL_DATA_SPARK

KEY_ENV = "PS_LOOPBACK_KEY"
USERS = 30
ANSWERED_BEFORE_KILL = 12


def write_graph(spark, store) -> None:
    ts = datetime(2024, 3, 1)
    edges = [(u, (u + k) % 8, 1 + k, 2, ts, ts, "train") for u in range(USERS) for k in range(3)]
    store.write_table(spark.createDataFrame(edges, "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, split string"), "edges")
    items = [(i, f"SKU{i}", f"Garden product {i}", 1) for i in range(8)]
    store.write_table(spark.createDataFrame(items, "item_idx int, item_id string, item_name string, degree int"), "items")


def overrides(tables_root: str, journal_dir: str, base_url: str) -> list[str]:
    return [
        f"tables.root={tables_root}", "spark.master=local[2]", "spark.driver_memory=1g",
        "labeling.backend=openai", "labeling.users.mode=all", f"labeling.journal_dir={journal_dir}",
        "labeling.progress_interval_s=0.5", f"labeling.openai.base_url={base_url}", f"labeling.openai.api_key_env={KEY_ENV}",
        "labeling.openai.model=loopback-model", "labeling.openai.concurrency=2", "labeling.openai.partitions=2",
        "labeling.openai.timeout_s=120", f"spark.extra={json.dumps(SMALL_DATA_SPARK)}",  # the suite's JVM settings
    ]


def survivors(group: int) -> list[str]:
    """Live (non-zombie) processes of a process group, waiting a little for the kill to land."""
    for _ in range(50):
        listing = subprocess.run(["ps", "-o", "stat=,args=", "-g", str(group)], capture_output=True, text=True).stdout
        alive = [line for line in listing.splitlines() if line.strip() and not line.strip().startswith("Z")]
        if not alive:
            return []
        time.sleep(0.1)
    return alive


def test_killed_run_resumes_without_paying_twice(spark, store, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-loopback-test")
    write_graph(spark, store)
    journal_dir = str(tmp_path / "journal")
    release = threading.Event()
    good = obedient(lambda uid: ["Gardener"])

    def first_run(body: dict, n: int) -> Reply:
        if n < ANSWERED_BEFORE_KILL:
            return good(body, n)
        release.wait(60)  # hold the rest in flight until the job is dead; they are never answered
        return server_error(503)

    with LoopbackChatServer(first_run) as server:
        args = overrides(store.conf.root, journal_dir, server.base_url)
        cmd = [sys.executable, "-m", "persona_spark.cli", "label-users", *[a for o in args for a in ("--set", o)]]
        job = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
        try:
            deadline = time.monotonic() + 240
            while len(list(journal_io.read_rows(journal_io.journal_files(journal_dir)))) < ANSWERED_BEFORE_KILL:
                assert job.poll() is None, f"labeling job exited early: {job.stderr.read().decode()[-2000:]}"
                assert time.monotonic() < deadline, "the labeling job never journaled its first answers"
                time.sleep(0.2)
        finally:
            os.killpg(job.pid, signal.SIGKILL)  # driver, JVM and Python workers: the whole job
            job.wait()
            release.set()
        assert not survivors(job.pid), "processes of the killed job are still running"
        assert not store.exists("user_labels") or store.read_table("user_labels").count() == 0
        paid_before = list(server.answered_ids)
        assert len(paid_before) == ANSWERED_BEFORE_KILL

        # A line the kill cut in half must be skipped, not break the recovery.
        (some_file, *_) = journal_io.journal_files(journal_dir)
        with open(some_file, "a", encoding="utf-8") as handle:
            handle.write('{"user_idx": 3, "personas": ["Gard')

        server.responder = good
        cfg = load_config(overrides=args)
        summary = STAGES["label-users"](RunContext(cfg, store))

    assert summary["entities"] == USERS and summary["ok"] == USERS and summary["error"] == 0
    assert len(server.answered_ids) == USERS and len(set(server.answered_ids)) == USERS  # nobody answered twice
    assert set(server.answered_ids[ANSWERED_BEFORE_KILL:]).isdisjoint(paid_before)
    table = store.read_table("user_labels")
    assert table.count() == USERS and table.select("user_idx").distinct().count() == USERS
    assert not journal_io.journal_files(journal_dir)  # committed, so the journal is cleared
