"""The wheel installs where Spark is the platform's own (Databricks, a cluster image): without pyspark.

uv (the dev extra) installs it into the fresh venv: it resolves the same wheel metadata that pip reads, from a
shared cache, in about a second where pip took about 30 s of the suite.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_and_imports_without_pyspark(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("persona_spark-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    uv = [sys.executable, "-m", "uv", "pip"]
    install = subprocess.run([*uv, "install", "-q", "--python", str(python), str(wheel)], capture_output=True,
                             text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    listed = subprocess.run([*uv, "list", "--format=freeze", "--python", str(python)], capture_output=True, text=True,
                            check=True).stdout.lower()
    assert "pandas" in listed and "pyarrow" in listed, listed  # the runtime dependencies came along
    assert "pyspark" not in listed and "delta-spark" not in listed
    probe = ("import persona_spark, persona_spark.config as c, persona_spark.tables.storage as s; "
             "cfg = c.load_config(None, ['root=s3a://bucket/run']); print(cfg.tables.root, s.join(cfg.root, 'x'))")
    imported = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.split() == ["s3a://bucket/run/tables", "s3a://bucket/run/x"]
    template = ("from importlib.resources import files; "
                "print(files('persona_spark').joinpath('resources/report/page.html').read_text().count('$nav'))")
    packaged = subprocess.run([str(python), "-c", template], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert packaged.stdout.split() == ["1"], "the report's page template must ship in the wheel: " + packaged.stderr[-2000:]
