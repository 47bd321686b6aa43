"""The three ways to run a stage reach the same functions: CLI, spark-submit jobs, Databricks bundle."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

from persona_spark.config import config_reference, load_config
from persona_spark.stages import STAGES

ROOT = Path(__file__).resolve().parents[2]


def _job_stage(path: Path) -> str:
    """The stage name a jobs/*.py script passes to the CLI."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Constant):
            return node.elts[0].value
    raise AssertionError(f"{path} does not call persona_spark.cli.main([stage, ...])")


def test_every_job_script_runs_a_registered_stage():
    jobs = sorted((ROOT / "jobs").glob("*.py"))
    assert jobs
    for job in jobs:
        stage = _job_stage(job)
        assert stage in STAGES, f"{job.name} runs unknown stage {stage!r}"
        assert job.stem == stage.replace("-", "_")


def _bundle_tasks():
    bundle = yaml.safe_load((ROOT / "databricks.yml").read_text())
    tasks = []
    for pattern in bundle["include"]:
        for resource in sorted(ROOT.glob(pattern)):
            for job in yaml.safe_load(resource.read_text())["resources"].get("jobs", {}).values():
                tasks += [(job, t) for t in job["tasks"]]
    return bundle, tasks


def test_every_table_names_a_registered_writer_and_the_report_reads_registered_tables():
    from persona_spark import report, tables

    assert {info.written_by for info in tables.TABLES.values()} - {"input"} <= set(STAGES)
    assert set(report.REPORT_TABLES) <= set(tables.TABLES)
    assert report.WRITTEN_BY["persona_calibration"] == "gplr" and report.WRITTEN_BY["robustness"] == "robustness"


def test_stages_name_tables_only_through_the_registry():
    """No stage module spells a table name where it reads or writes: a renamed table is one edit in
    persona_spark/tables/__init__.py."""
    from persona_spark.tables import TABLES

    table_calls = {"read_table", "write_table", "merge_table", "exists", "location", "read_if_exists", "write_slice",
                   "locations"}
    spelled = []
    for module in sorted((ROOT / "persona_spark" / "stages").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
                if name in table_calls:
                    spelled += [f"{module.name}:{node.lineno} {arg.value!r}" for arg in node.args
                                if isinstance(arg, ast.Constant) and arg.value in TABLES]
    assert not spelled, spelled


def test_library_modules_never_hold_the_table_store():
    """Reading and writing happen in the stages (and the notebook helpers); the library gets DataFrames
    and, for labeling, a cache object."""
    edge = {"cli.py", "io.py", "notebook.py"}
    offenders = []
    for module in sorted((ROOT / "persona_spark").rglob("*.py")):
        relative = module.relative_to(ROOT / "persona_spark")
        if relative.parts[0] == "stages" or str(relative) in edge:
            continue
        names = {getattr(node, "id", None) or getattr(node, "arg", None) or getattr(node, "attr", None)
                 for node in ast.walk(ast.parse(module.read_text()))}
        if names & {"store", "TableStore"}:
            offenders.append(str(relative))
    assert not offenders, offenders


def test_bundle_targets_schedule_and_secrets():
    bundle, tasks = _bundle_tasks()
    assert bundle["targets"]["dev"]["mode"] == "development"
    assert bundle["targets"]["prod"]["mode"] == "production"
    assert bundle["targets"]["dev"]["variables"]["schedule_pause"] == "PAUSED"
    jobs = {job["name"].split("-${")[0]: job for job, _ in tasks}
    job = jobs["persona-refresh"]
    assert job["schedule"]["pause_status"] == "${var.schedule_pause}"
    env = job["job_clusters"][0]["new_cluster"]["spark_env_vars"]
    assert all(v.startswith("{{secrets/") for v in env.values())  # keys only from the secret scope
    keys = [t["task_key"] for j, t in tasks if j is job]
    assert keys == ["ingest", "build_graph", "gplr", "audience", "export_tripartite", "train", "cold_start", "segment", "report"]
    serverless = jobs["persona-refresh-serverless"]
    assert all(e["spec"]["dependencies"][0] == "../dist/*.whl" for e in serverless["environments"])
    environments = {e["environment_key"] for e in serverless["environments"]}
    assert all(t["environment_key"] in environments and "job_cluster_key" not in t and "libraries" not in t
               for j, t in tasks if j is serverless)
    gpu = {c["job_cluster_key"]: c for c in job["job_clusters"]}[[t for _, t in tasks if t["task_key"] == "train"][0]["job_cluster_key"]]
    assert gpu["new_cluster"]["node_type_id"] == "${var.gpu_node_type}"


def test_bundle_tasks_call_package_entry_points_with_valid_parameters():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    bundle, tasks = _bundle_tasks()
    variables = {name: str(v.get("default", "x")) for name, v in bundle["variables"].items()}
    for _, task in tasks:
        wheel_task = task["python_wheel_task"]
        assert wheel_task["package_name"] == "persona_spark"
        assert scripts[wheel_task["entry_point"]] == "persona_spark.cli:main"
        params = [re.sub(r"\$\{var\.(\w+)\}", lambda m: variables[m.group(1)], str(p)) for p in wheel_task["parameters"]]
        params = [re.sub(r"\{\{job\.parameters\.\w+\}\}", "x", p) for p in params]
        stage, rest = params[0], params[1:]
        assert stage in STAGES, f"task {task['task_key']} runs unknown stage {stage}"
        conf = rest[rest.index("--conf") + 1]
        assert conf.endswith("conf/databricks.yaml")
        overrides = [rest[i + 1] for i, p in enumerate(rest) if p == "--set"]
        load_config(ROOT / "conf" / "databricks.yaml", overrides)  # every key exists and validates


def test_every_shipped_config_loads():
    for conf in sorted((ROOT / "conf").glob("*.yaml")):
        load_config(conf)


def test_defined_audiences_of_shipped_configs_parse():
    from persona_spark.audience import parse
    from persona_spark.personas import load_persona_set

    for conf in sorted((ROOT / "conf").glob("*.yaml")):
        cfg = load_config(conf)
        for spec in cfg.audience.defined:
            parse(spec.query, load_persona_set(cfg.personas))  # raises naming the bad token


def test_cli_lists_every_stage():
    out = subprocess.run([sys.executable, "-m", "persona_spark.cli", "--help"], capture_output=True, text=True, check=True)
    for stage in STAGES:
        assert stage in out.stdout


def test_unknown_setting_is_rejected_naming_it():
    from persona_spark.errors import UserError

    with pytest.raises(UserError, match=r"^config: gplr\.budgett: unknown key \(did you mean gplr\.budget_fraction\?\)$"):
        load_config(None, ["gplr.budgett=3"])
    load_config(None, ["gplr.budget_fraction=0.2"])  # the suggested key is accepted


def test_configuration_reference_is_current():
    """docs/reference/configuration.md is generated from config.py; a new knob must show up there."""
    assert (ROOT / "docs" / "reference" / "configuration.md").read_text() == config_reference(), (
        "docs/reference/configuration.md is stale: "
        "run `python -m persona_spark.config > docs/reference/configuration.md`")


def test_paper_conf_is_the_papers_settings_and_extends_merges(tmp_path):
    paper = load_config(ROOT / "conf" / "paper.yaml")
    assert (paper.affinity.ell, paper.affinity.beta, paper.gplr.rounds, paper.gplr.top_k) == (1, 0.5, 10, 5)
    assert paper.gplr.assignment == "topk" and paper.labeling.user_prompt == "paper_v1"
    assert paper.labeling.persona_generation.method == "paper" and paper.labeling.openai.model == "gpt-4-turbo"
    faithful = load_config(ROOT / "conf" / "paper_faithful_online_retail.yaml")
    assert faithful.labeling.backend == "recorded" and faithful.labeling.user_prompt == "paper_v1"  # override + inherited
    assert faithful.labeling.openai.temperature == 1.0 and faithful.affinity.ell == 1
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="loops"):
        load_config(tmp_path / "a.yaml")
