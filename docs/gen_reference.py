"""Write the generated reference pages: docs/reference/cli.md and docs/reference/tables.md.

    python docs/gen_reference.py           # rewrite them
    python docs/gen_reference.py --check   # exit 1 when a committed page differs from what the code gives

The configuration page (docs/reference/configuration.md) comes from ``persona_spark.config.config_reference``
and the benchmarks page from ``benchmarks/render_docs.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from persona_spark.cli import cli_reference, tables_reference

REFERENCE = Path(__file__).resolve().parent / "reference"
PAGES = {"cli.md": cli_reference, "tables.md": tables_reference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page is not current")
    args = parser.parse_args(argv)
    stale = []
    for name, render in PAGES.items():
        path, page = REFERENCE / name, render()
        if args.check:
            if not path.exists() or path.read_text() != page:
                stale.append(name)
        else:
            path.write_text(page)
    if stale:
        print(f"stale: {', '.join(stale)}; run python docs/gen_reference.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
