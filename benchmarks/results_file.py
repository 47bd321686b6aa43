"""Every benchmark prints JSON lines; this also appends them to the benchmark's one curated results file.

Each appended line carries ``command``, ``machine`` and ``date``, so ``benchmarks/render_docs.py`` can say
under every table of ``docs/benchmarks.md`` how, where and when its figures were taken. The path may name a
field of the line in braces (``results/{bench}.jsonl``) to split one script's lines over two files.
``--out -`` prints only.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """``BENCH_MACHINE`` when set (a name the docs can show), else cores, memory and host name."""
    if os.environ.get("BENCH_MACHINE"):
        return os.environ["BENCH_MACHINE"]
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {memory_gib:.0f} GiB, {platform.node()}"


class _JsonLinesTee:
    def __init__(self, stream, path: str):
        self.stream, self.path, self.pending = stream, path, ""
        self.stamp = {"command": "python " + shlex.join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]),
                      "machine": machine(), "date": datetime.date.today().isoformat()}

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._append(line)
        return self.stream.write(text)

    def _append(self, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        path = Path(self.path.format_map({k: v for k, v in record.items() if isinstance(v, str)}))
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.write(json.dumps({**record, **self.stamp}) + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def append_results_to(path: str) -> None:
    """From now on, every JSON object this process prints on stdout is also appended to ``path``."""
    if path != "-":
        sys.stdout = _JsonLinesTee(sys.stdout, path)
