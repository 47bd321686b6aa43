"""The Databricks bundle checked the way the Databricks CLI would: its JSON schema and its own checks (the offline
validator in ../shared/databricks), where the tasks find their tables, what the serverless environment brings,
and that both job variants run the same stages."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from persona_spark.config import load_config
from persona_spark.stages import STAGES
from tests.conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = SHARED_DATA.parent / "databricks" / "validate_bundle.py"
# Python of each serverless environment version and of the job clusters' runtime (Databricks release notes)
ENVIRONMENT_PYTHON = {"1": "3.10", "2": "3.11", "3": "3.12", "4": "3.12"}
CURRENT_ENVIRONMENT = "4"  # the CLI's default-python template
RUNTIME_PYTHON = {"17.3": "3.12"}
SCHEMA, VOLUME = "${resources.schemas.persona_schema.name}", "${resources.volumes.persona_volume.name}"
CATALOG = "${resources.schemas.persona_schema.catalog_name}"
EXPERIMENT = "${resources.experiments.persona_experiment.name}"


def bundle() -> dict:
    """databricks.yml with the resources of its include: files merged in (each resource is defined once)."""
    root = yaml.safe_load((ROOT / "databricks.yml").read_text())
    resources: dict[str, dict] = {}
    for pattern in root["include"]:
        for path in sorted(ROOT.glob(pattern)):
            for kind, found in yaml.safe_load(path.read_text())["resources"].items():
                assert not set(found) & set(resources.get(kind, {})), f"{path.name} redefines {kind}"
                resources.setdefault(kind, {}).update(found)
    return {**root, "resources": resources}


def overrides(task: dict) -> dict[str, str]:
    """A task's ``--set key=value`` pairs."""
    params = task["python_wheel_task"]["parameters"]
    return dict(params[i + 1].split("=", 1) for i, p in enumerate(params) if p == "--set")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_bundle_validates_strictly_against_the_cli_schema_and_checks():
    """No error and no warning (deprecated fields, references, dev-mode schema prefix, production root path)."""
    if not VALIDATOR.exists():
        pytest.skip(f"bundle validator not present: {VALIDATOR} (../shared/databricks next to the shared data)")
    for module in ("jsonschema", "regex"):
        pytest.importorskip(module, reason="the validator needs the dev extra's jsonschema and regex")
    done = subprocess.run([sys.executable, str(VALIDATOR), "--strict", str(ROOT)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "summary: 0 error, 0 warning, 0 recommendation" in done.stdout, done.stdout
    assert "resources/persona_refresh_serverless.job.yml" in done.stdout  # the include: files were merged


def test_tasks_find_tables_and_volume_in_the_schema_the_bundle_declares():
    """In development mode the CLI prefixes the declared schema's name; only references to the resource follow
    it, so no task, parameter or target names the schema through ${var.schema}."""
    merged = bundle()
    resources = merged["resources"]
    assert resources["schemas"]["persona_schema"]["name"] == "${var.schema}"
    volume = resources["volumes"]["persona_volume"]
    assert (volume["catalog_name"], volume["schema_name"]) == (CATALOG, SCHEMA)
    mentions = re.findall(r"\$\{var\.schema\}", yaml.safe_dump({k: v for k, v in resources.items() if k != "schemas"}))
    assert not mentions and all("resources" not in t for t in merged["targets"].values())
    for name, job in resources["jobs"].items():
        defaults = {p["name"]: p["default"] for p in job["parameters"]}
        assert defaults == {"catalog": CATALOG, "schema": SCHEMA}, name
        for task in job["tasks"]:
            where = overrides(task)
            assert where["tables.catalog"] == "{{job.parameters.catalog}}", task["task_key"]
            assert where["tables.schema"] == "{{job.parameters.schema}}", task["task_key"]
            assert where["root"] == f"/Volumes/{{{{job.parameters.catalog}}}}/{{{{job.parameters.schema}}}}/{VOLUME}"


def test_serverless_environment_python_fits_requires_python_and_takes_the_wheel_and_its_extras():
    merged, project = bundle(), pyproject()
    requires = SpecifierSet(project["requires-python"])
    artifact = merged["artifacts"]["persona_spark_wheel"]
    assert artifact["build"].startswith("uv build --wheel") and artifact["path"] == "."
    extras = {str(Requirement(r)) for extra in ("mlflow", "train") for r in project["optional-dependencies"][extra]}
    # the wheel brings no Spark: serverless and the runtimes bring their own (Spark Connect there)
    assert not any(Requirement(r).name.startswith("pyspark") for r in project["dependencies"])
    jobs = merged["resources"]["jobs"]
    environments = {e["environment_key"]: e["spec"] for e in jobs["persona_refresh_serverless"]["environments"]}
    used = {t["environment_key"] for t in jobs["persona_refresh_serverless"]["tasks"]}
    assert used == set(environments)
    for key, spec in environments.items():
        assert spec["environment_version"] == CURRENT_ENVIRONMENT and "client" not in spec
        assert ENVIRONMENT_PYTHON[spec["environment_version"]] in requires, (key, project["requires-python"])
        wheel, *more = spec["dependencies"]
        assert wheel == "../dist/*.whl"  # what the artifact builds, uploaded and rewritten by the CLI
        assert {str(Requirement(r)) for r in more} <= extras, key  # the same pins as pyproject's extras
    train = next(t for t in jobs["persona_refresh_serverless"]["tasks"] if t["task_key"] == "train")
    assert {str(Requirement(r)) for r in project["optional-dependencies"]["train"]} <= set(
        environments[train["environment_key"]]["dependencies"])
    variables = merged["variables"]
    for name in ("spark_version", "gpu_spark_version"):
        runtime = re.match(r"\d+\.\d+", variables[name]["default"]).group(0)
        assert RUNTIME_PYTHON[runtime] in requires, name


def test_both_job_variants_run_the_same_stages_in_the_same_order():
    """Task by task: the CLI stage it runs (from the CLI's stage table) and what it waits for."""
    merged = bundle()
    jobs, variables = merged["resources"]["jobs"], merged["variables"]

    def stages(job: dict) -> list[tuple[str, str, list[str]]]:
        return [(t["task_key"], t["python_wheel_task"]["parameters"][0],
                 sorted(d["task_key"] for d in t.get("depends_on", []))) for t in job["tasks"]]

    classic, serverless = stages(jobs["persona_refresh"]), stages(jobs["persona_refresh_serverless"])
    assert classic == serverless
    assert all(stage in STAGES and key == stage.replace("-", "_") for key, stage, _ in classic)
    assert {stage for _, stage, _ in classic} >= {"ingest", "build-graph", "gplr", "train", "cold-start", "report"}
    conf = ROOT / "conf" / "databricks.yaml"
    for name, job in jobs.items():
        for task in job["tasks"]:
            where = overrides(task)
            values = {k: re.sub(r"\$\{var\.(\w+)\}", lambda m: str(variables[m.group(1)]["default"]), v)
                      for k, v in where.items()}
            settings = load_config(conf, [f"{k}={v}" for k, v in values.items()])
            # a Connect client cannot set the checkpoint directory: serverless tasks pin with local checkpoints
            assert settings.spark.checkpoint == ("local" if "serverless" in name else "reliable"), task["task_key"]
            if task["python_wheel_task"]["parameters"][0] in ("gplr", "train"):
                assert where["mlflow.experiment"] == EXPERIMENT and settings.mlflow.enabled
