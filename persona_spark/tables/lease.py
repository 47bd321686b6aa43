"""One writer per tables root: a lease object beside the tables that a run takes before it starts.

``<tables.root>/_lease`` (or ``tables.lease_location``) is a small JSON object naming its holder: host, pid,
run id, stage, when it started and when it expires. A run creates it with a create-if-absent write
(``storage.create_exclusive``), so of two runs racing for it one wins; the other reads who holds it and stops
with :class:`LeaseHeld`, a one-line user error, before its stage reads or writes anything: no LLM answer is
paid for twice and no Delta commit races another run's. The holder renews the expiry every third of the TTL
while it runs and removes the object when it ends, failed or not.

A lease is stale when its expiry has passed (its holder was killed, or stalled past the TTL) or when its holder
was a process on this host that is gone (a ``kill -9`` on a laptop). The next run takes a stale lease
over through a create-if-absent of a marker named after the stale holder's run, so two runs that find the same
stale lease cannot both take it. An object that does not parse (a racer caught mid-write, a damaged file) is
held by an unknown holder until its modification time plus the TTL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

from persona_spark.errors import UserError
from persona_spark.tables import storage

log = logging.getLogger(__name__)

LEASE_NAME = "_lease"


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its object says."""

    host: str
    pid: int
    run_id: str
    stage: str
    started: str  # ISO 8601, UTC
    expires: str  # ISO 8601, UTC

    def describe(self) -> str:
        return (f"persona-spark {self.stage} (run {self.run_id}, pid {self.pid} on {self.host}, started "
                f"{self.started}, lease expires {self.expires} unless renewed)")

    def stale(self, now: datetime) -> bool:
        """Its expiry passed, or it was a process on this host that is gone."""
        return datetime.fromisoformat(self.expires) <= now or (self.host == socket.gethostname() and
                                                                not _process_alive(self.pid))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class LeaseHeld(UserError):
    """Another run holds the lease of these tables."""

    def __init__(self, location: str, holder: Holder | None):
        who = holder.describe() if holder else "another run"
        super().__init__(f"the tables are in use by {who}: one run writes them at a time. Wait for it to end, or "
                         f"remove {location} if that run is gone")
        self.holder = holder


class Lease:
    """``with Lease(location, ttl_s, stage, run_id):`` the block runs holding the lease (``LeaseHeld`` when
    another run does), renewed in the background and released at the end, also on an exception."""

    def __init__(self, location: str, ttl_s: float, stage: str, run_id: str):
        self.location, self.ttl_s, self.stage, self.run_id = location, ttl_s, stage, run_id
        self.started = datetime.now(timezone.utc)
        self._marker: str | None = None  # the takeover marker this run created, removed on release
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def holder(self) -> Holder:
        expires = datetime.now(timezone.utc) + timedelta(seconds=self.ttl_s)
        return Holder(socket.gethostname(), os.getpid(), self.run_id, self.stage,
                      self.started.isoformat(timespec="seconds"), expires.isoformat(timespec="milliseconds"))

    def _payload(self) -> bytes:
        return json.dumps(asdict(self.holder())).encode()

    def current(self) -> Holder | None:
        """The holder the object names; None when there is none."""
        try:
            data = storage.read_bytes(self.location)
        except FileNotFoundError:
            return None
        try:
            return Holder(**json.loads(data))
        except (ValueError, TypeError):
            written = storage.modified(self.location)
            if written is None:  # removed meanwhile
                return None
            since = datetime.fromtimestamp(written, timezone.utc)
            return Holder("unknown host", 0, f"unreadable-{int(written)}", "(unreadable lease)",
                          since.isoformat(timespec="seconds"),
                          (since + timedelta(seconds=self.ttl_s)).isoformat(timespec="seconds"))

    def acquire(self) -> None:
        """Take the lease, or raise ``LeaseHeld`` naming the run that has it."""
        for _ in range(3):  # a lease released between our attempt and our read: try again
            if storage.create_exclusive(self.location, self._payload()):
                break
            held = self.current()
            if held is None:
                continue
            if not held.stale(datetime.now(timezone.utc)):
                raise LeaseHeld(self.location, held)
            marker = f"{self.location}.taken-{held.run_id}"
            if not storage.create_exclusive(marker, self._payload()):  # another run is taking it over
                raise LeaseHeld(self.location, self.current() or held)
            self._marker = marker
            storage.write_bytes(self.location, self._payload())
            log.warning("took over the stale lease of %s at %s", held.describe(), self.location)
            break
        else:
            raise LeaseHeld(self.location, self.current())
        self._renewer = threading.Thread(target=self._renew_until_stopped, daemon=True, name="tables-lease")
        self._renewer.start()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return
            except Exception:  # noqa: BLE001 - a store that failed once is tried again at the next third
                log.warning("could not renew the lease at %s; trying again in %.0f s", self.location, self.ttl_s / 3,
                            exc_info=True)

    def renew(self) -> bool:
        """Push the expiry one TTL ahead; False (logged) when another run holds the lease instead."""
        held = self.current()
        if held is None or held.run_id != self.run_id:
            log.error("the lease at %s is not this run's (%s): another run may write the same tables", self.location,
                      held.describe() if held else "removed")
            return False
        storage.write_bytes(self.location, self._payload())
        return True

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this run's. A store that fails here is logged, not
        raised: the stage's own outcome stands, and the lease expires by itself."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        try:
            held = self.current()
            if held is not None and held.run_id == self.run_id:
                storage.remove(self.location)
            if self._marker is not None:
                storage.remove(self._marker)
        except Exception:  # noqa: BLE001
            log.warning("could not remove the lease at %s; it expires within %.0f s", self.location, self.ttl_s,
                        exc_info=True)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
