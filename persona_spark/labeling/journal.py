"""The append-only journal of paid answers: written the moment an answer arrives, read on restart.

Layout: ``<journal_dir>/<kind>/<run>-c<chunk>/part-<partition>-<attempt>-<uuid>[-<n>].jsonl``, one
JSON label row per line. ``journal_dir`` is any location ``persona_spark.tables.storage`` reaches, so
executors on other machines and the driver share it (object storage, a Volume, HDFS). On a local
disk a task appends to one file and flushes after every answer; an object store has no append,
so each batch of answers becomes its own small object, durable once written. A killed job
(driver, executor or the whole process tree) leaves its answers here; the next run commits them
to the cache table before deciding what is still missing, and a retried task reuses the answers
of its failed attempt, so no answer is paid for twice. A line cut by the kill is skipped.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from persona_spark.tables import storage

JOURNAL_SUFFIX = ".jsonl"


def chunk_dir(journal_dir: str, kind: str, run_id: str, chunk: int) -> str:
    return storage.join(journal_dir, kind, f"{run_id}-c{chunk}")


def journal_files(location: str) -> list[str]:
    """All journal files under ``location`` (a chunk folder or a kind folder)."""
    return storage.list_files(location, JOURNAL_SUFFIX)


def complete_rows(data: bytes) -> Iterator[dict]:
    """Rows of whole lines only: a line cut short by a kill is skipped."""
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def read_rows(files: list[str]) -> Iterator[dict]:
    for file in files:
        yield from complete_rows(storage.read_bytes(file))


def remove(location: str) -> None:
    storage.remove_tree(location)


class JournalWriter:
    """One file (local disk) or one object series (object store) per task attempt, so concurrent
    tasks never write to the same file."""

    def __init__(self, folder: str, partition: int, attempt: int):
        self.stem = storage.join(folder, f"part-{partition:05d}-{attempt}-{uuid.uuid4().hex[:8]}")
        self.objects = 0
        self._handle = None
        if storage.is_local(folder):
            storage.makedirs(folder)
            self._handle = open(storage.filesystem(self.stem + JOURNAL_SUFFIX)[1], "a", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if self._handle is not None:
            self._handle.write(text)
            self._handle.flush()  # in the OS page cache now: survives the process being killed
            return
        self.objects += 1
        storage.write_text(f"{self.stem}-{self.objects:06d}{JOURNAL_SUFFIX}", text)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class JournalTail:
    """Incrementally counts rows appended to a chunk folder (for the driver's progress log)."""

    def __init__(self, folder: str):
        self.folder = folder
        self._offsets: dict[str, int] = {}
        self.rows = 0
        self.statuses: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def poll(self) -> None:
        for file in journal_files(self.folder):
            data = storage.read_bytes(file)[self._offsets.get(file, 0):]
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[file] = self._offsets.get(file, 0) + len(complete)
            for row in complete_rows(complete):
                self.rows += 1
                self.statuses[row["status"]] = self.statuses.get(row["status"], 0) + 1
                self.prompt_tokens += row.get("prompt_tokens") or 0
                self.completion_tokens += row.get("completion_tokens") or 0
