"""The append-only journal of paid answers: written the moment an answer arrives, read on restart.

Layout: ``<journal_dir>/<kind>/<run>-c<chunk>/part-<partition>-<attempt>-<uuid>.jsonl``, one JSON
label row per line, flushed to the OS after every answer. A killed job (driver, executor or the
whole process tree) leaves its answers here; the next run commits them to the cache table before
deciding what is still missing, and a retried task reuses the answers of its failed attempt, so no
answer is paid for twice. A line cut by the kill is not valid JSON and is skipped.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Iterator

JOURNAL_SUFFIX = ".jsonl"


def chunk_dir(journal_dir: str, kind: str, run_id: str, chunk: int) -> str:
    return str(Path(journal_dir) / kind / f"{run_id}-c{chunk}")


def journal_files(path: str | Path) -> list[Path]:
    """All journal files under ``path`` (a chunk folder or a kind folder)."""
    root = Path(path)
    return sorted(root.rglob(f"*{JOURNAL_SUFFIX}")) if root.is_dir() else []


def read_rows(files: list[Path]) -> Iterator[dict]:
    """Complete rows only: a line cut short by a kill is skipped."""
    for file in files:
        with open(file, encoding="utf-8") as handle:
            for line in handle:
                if not line.endswith("\n"):
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


def remove(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class JournalWriter:
    """One file per task attempt, so concurrent tasks never write to the same file."""

    def __init__(self, folder: str, partition: int, attempt: int):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / f"part-{partition:05d}-{attempt}-{uuid.uuid4().hex[:8]}{JOURNAL_SUFFIX}"
        self._handle = open(self.path, "a", encoding="utf-8")

    def write(self, rows: list[dict]) -> None:
        self._handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        self._handle.flush()  # in the OS page cache now: survives the process being killed

    def close(self) -> None:
        self._handle.close()


class JournalTail:
    """Incrementally counts rows appended to a chunk folder (for the driver's progress log)."""

    def __init__(self, folder: str):
        self.folder = folder
        self._offsets: dict[Path, int] = {}
        self.rows = 0
        self.statuses: dict[str, int] = {}
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def poll(self) -> None:
        for file in journal_files(self.folder):
            with open(file, "rb") as handle:
                handle.seek(self._offsets.get(file, 0))
                data = handle.read()
            complete = data[: data.rfind(b"\n") + 1]
            self._offsets[file] = self._offsets.get(file, 0) + len(complete)
            for line in complete.splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.rows += 1
                self.statuses[row["status"]] = self.statuses.get(row["status"], 0) + 1
                self.prompt_tokens += row.get("prompt_tokens") or 0
                self.completion_tokens += row.get("completion_tokens") or 0
