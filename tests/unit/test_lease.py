"""The tables' lease on a local disk and on an S3-compatible server (moto on 127.0.0.1), no Spark: one holder at a
time, racers cannot both win, stale leases are taken over once, the holder renews and releases."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from persona_spark.tables import storage
from persona_spark.tables.lease import Holder, Lease, LeaseHeld
from tests.production_world import S3Server, local_or_s3_location

BUCKET = "leases"


@pytest.fixture(scope="module")
def s3():
    with S3Server.with_bucket(BUCKET) as server:
        yield server


@pytest.fixture(params=["local", "s3a"])
def root(request, tmp_path, monkeypatch):
    return local_or_s3_location(request, tmp_path, monkeypatch, BUCKET, "tables")


def write_holder(location: str, **changes) -> Holder:
    """A lease object as another run would have left it."""
    now = datetime.now(timezone.utc)
    fields = dict(host="another-host", pid=4242, run_id="20240601T000000.000000Z-other", stage="gplr",
                  started=now.isoformat(timespec="seconds"),
                  expires=(now + timedelta(minutes=10)).isoformat(timespec="seconds"))
    holder = Holder(**{**fields, **changes})
    storage.write_text(location, json.dumps(holder.__dict__))
    return holder


def test_one_holder_at_a_time_and_the_refusal_names_it(root):
    location = storage.join(root, "_lease")
    with Lease(location, 600, "gplr", "run-a"):
        held = json.loads(storage.read_text(location))
        assert held["run_id"] == "run-a" and held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        with pytest.raises(LeaseHeld) as refused:
            Lease(location, 600, "ingest", "run-b").acquire()
        message = str(refused.value)
        assert "persona-spark gplr (run run-a, pid" in message and socket.gethostname() in message
        assert location in message and "\n" not in message
        assert json.loads(storage.read_text(location))["run_id"] == "run-a"  # the refusal left it alone
    assert not storage.exists(location)
    with Lease(location, 600, "ingest", "run-b"):  # free again
        assert json.loads(storage.read_text(location))["run_id"] == "run-b"


def test_a_lease_is_released_when_the_block_fails(root):
    location = storage.join(root, "_lease")
    with pytest.raises(RuntimeError, match="stage failed"), Lease(location, 600, "gplr", "run-a"):
        raise RuntimeError("stage failed")
    assert not storage.exists(location)


def test_an_expired_lease_is_taken_over_once(root):
    location = storage.join(root, "_lease")
    past = datetime.now(timezone.utc) - timedelta(minutes=1)
    stale = write_holder(location, expires=past.isoformat(timespec="seconds"))
    with Lease(location, 600, "gplr", "run-new"):
        assert json.loads(storage.read_text(location))["run_id"] == "run-new"
        marker = f"{location}.taken-{stale.run_id}"
        assert storage.exists(marker)
        # a second run that read the same stale lease loses the takeover: the marker is there
        write_holder(location, expires=past.isoformat(timespec="seconds"))
        with pytest.raises(LeaseHeld, match="in use by persona-spark gplr"):
            Lease(location, 600, "ingest", "run-late").acquire()
        storage.write_text(location, json.dumps(Lease(location, 600, "gplr", "run-new").holder().__dict__))
    assert not storage.exists(location) and not storage.exists(marker)


def test_a_live_lease_of_another_host_holds_until_it_expires(root):
    location = storage.join(root, "_lease")
    holder = write_holder(location)
    with pytest.raises(LeaseHeld, match=f"run {holder.run_id}, pid 4242 on another-host"):
        Lease(location, 600, "gplr", "run-b").acquire()


def test_a_lease_of_a_process_gone_from_this_host_is_stale_at_once(tmp_path):
    gone = __import__("subprocess").run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                        text=True, check=True)
    location = str(tmp_path / "_lease")
    write_holder(location, host=socket.gethostname(), pid=int(gone.stdout))
    with Lease(location, 600, "gplr", "run-b"):
        assert json.loads(storage.read_text(location))["run_id"] == "run-b"


def test_an_unreadable_lease_holds_until_its_write_time_plus_the_ttl(tmp_path):
    location = str(tmp_path / "_lease")
    storage.write_text(location, '{"host": "half-writ')
    with pytest.raises(LeaseHeld, match=r"\(unreadable lease\)"):
        Lease(location, 600, "gplr", "run-b").acquire()
    old = time.time() - 601
    os.utime(location, (old, old))
    with Lease(location, 600, "gplr", "run-b"):
        assert json.loads(storage.read_text(location))["run_id"] == "run-b"


def test_the_holder_renews_its_expiry_while_it_runs(root):
    location = storage.join(root, "_lease")
    with Lease(location, 0.6, "gplr", "run-a"):  # renewed every 0.2 s
        first = json.loads(storage.read_text(location))["expires"]
        time.sleep(1.2)  # past the first expiry
        renewed = json.loads(storage.read_text(location))
        assert renewed["run_id"] == "run-a" and renewed["expires"] > first
        with pytest.raises(LeaseHeld):
            Lease(location, 0.6, "gplr", "run-b").acquire()


def test_racers_for_one_location_never_both_win(root):
    location = storage.join(root, "race")
    start = threading.Barrier(8)
    won = []

    def race(i: int) -> None:
        start.wait()
        if storage.create_exclusive(location, f"writer {i}".encode()):
            won.append(i)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and storage.read_text(location) == f"writer {won[0]}"


def test_without_boto3_s3_falls_back_to_write_and_read_back(s3, tmp_path, monkeypatch):
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 raises ImportError
    location = f"s3a://{BUCKET}/{tmp_path.name}/fallback"
    assert storage.create_exclusive(location, b"first")
    assert not storage.create_exclusive(location, b"second")
    assert storage.read_text(location) == "first"


def test_the_lease_lives_under_the_root_in_both_modes_unless_placed_elsewhere(tmp_path):
    from persona_spark.config import TablesConf
    from persona_spark.tables.store import lease_location

    volume = "/Volumes/main/shop/persona"
    assert lease_location(TablesConf(root=str(tmp_path))) == storage.join(str(tmp_path), "_lease")
    assert lease_location(TablesConf(root=volume, catalog="main", schema="shop")) == volume + "/_lease"
    assert lease_location(TablesConf(root=volume, catalog="main", lease_location="s3a://b/l")) == "s3a://b/l"
    assert lease_location(TablesConf(root=volume, lease=False)) is None
