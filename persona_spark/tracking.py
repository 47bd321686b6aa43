"""MLflow at the edge: each gplr run and each trained model as an MLflow run, where data scientists look.

The stages call this module after their Delta writes; the library never does. Where runs go
(:func:`tracking_uri`): ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else the workspace's own
tracking server on Databricks (``databricks``), else MLflow's SQLite store in ``tables.root/mlflow.db``. MLflow
is an optional extra (``mlflow-skinny`` and the SQL store's SQLAlchemy): without it, or when the tracking server fails, the stage logs one
warning line and its summary says why nothing was tracked, because a stage whose tables are written must not
fail over its bookkeeping. ``mlflow.enabled=false`` turns all of it off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from persona_spark.config import Config, MLflowConf
from persona_spark.errors import UserError
from persona_spark.labeling.pricing import rates
from persona_spark.tables import storage

if TYPE_CHECKING:
    from persona_spark.recommend.train import TrainResult

log = logging.getLogger("persona_spark")

DATABRICKS = "databricks"
DEFAULT_EXPERIMENT = "persona-spark"
LOCAL_STORE = "mlflow.db"  # the local default: MLflow's SQLite store, one file under tables.root
MODEL_NAME = "model"  # the logged model's name: runs:/<run_id>/model
MODEL_FILES = "extra_files"  # where MLflow's torch flavour keeps a model's extra files
LEDGER_KEYS = ("asked", "ok", "unrepresentable", "errors", "answered", "prompt_tokens", "completion_tokens")


def tracking_uri(conf: MLflowConf, tables_root: str) -> str | None:
    """Where runs go; None when nothing names a place and ``tables_root`` is no local folder."""
    if conf.tracking_uri:
        return conf.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return DATABRICKS
    if not storage.is_local(tables_root):
        return None
    folder = urlparse(tables_root).path if storage.scheme(tables_root) == "file" else storage.absolute(tables_root)
    return f"sqlite:///{Path(folder, LOCAL_STORE).as_posix()}"


def experiment_name(conf: MLflowConf, uri: str) -> str | None:
    """The configured experiment, else ``persona-spark``; None on Databricks, where MLflow's default is the
    notebook's own experiment and a relative name is refused."""
    if conf.experiment:
        return conf.experiment
    return None if uri == DATABRICKS else DEFAULT_EXPERIMENT


def shown(uri: str) -> str:
    """``uri`` without a ``user:password@`` part, for summaries and log lines."""
    return re.sub(r"^([a-zA-Z][\w+.-]*://)[^/@]*@", r"\1", uri)


def metric_name(name: str) -> str:
    """A key MLflow accepts (letters, digits, ``_ - . / :`` and spaces): ``ndcg@10`` -> ``ndcg_at_10``."""
    return re.sub(r"[^\w\-. /:]", "_", name.replace("@", "_at_"))


def numbers(values: dict, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested dict as ``prefix.key.subkey -> float`` (text, lists and None left out)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(numbers(value, name))
        elif isinstance(value, (bool, int, float)):
            out[metric_name(name)] = float(value)
    return out


def flat(values: dict, prefix: str) -> dict[str, str]:
    """A section's settings as MLflow params: ``prefix.key -> text`` (nested sections flattened)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        out.update(flat(value, name) if isinstance(value, dict) else {name: str(value)})
    return out


def gplr_params(cfg: Config, summary: dict) -> dict[str, str]:
    """A gplr run's settings: GPLR's and the propagation's, and what labeled (never the endpoint's key)."""
    labeling = cfg.labeling
    params = {**flat(cfg.gplr.model_dump(), "gplr"), **flat(cfg.affinity.model_dump(), "affinity"),
              "labeling.backend": labeling.backend, "labeling.user_prompt": labeling.user_prompt,
              "labeling.item_prompt": labeling.item_prompt,
              "labeling.max_personas_per_answer": str(labeling.max_personas_per_answer),
              "personas": cfg.personas, "persona_set_version": str(summary.get("persona_set_version"))}
    if labeling.backend in ("openai", "openai_batch"):
        params["labeling.openai.model"] = labeling.openai.model
    return params


def ledger_totals(cfg: Config, rounds: list[dict], audit: dict | None = None) -> dict[str, float]:
    """What the run's new answers cost: counts and tokens over its rounds (prototypes reused from an earlier
    run were paid for then, counted apart as ``reused``) and its audit sample, and their USD at the configured
    rates of the labeling channel (without the provider's cached-prompt discount, which the rounds do not
    count). ``audit_*``: the audit's part (``audit_share``: of the cost, of the users asked when nothing costs)."""
    paid = [r for r in rounds if r["sampling"] != "reused"]
    totals = {key: float(sum(r[key] for r in paid)) for key in LEDGER_KEYS}
    totals["reused"] = float(sum(r["answered"] for r in rounds if r["sampling"] == "reused"))
    channel = "batch" if cfg.labeling.backend == "openai_batch" else "sync"
    price = rates(cfg.labeling.openai, channel)
    if audit:
        part = {key: float(audit.get(key, 0)) for key in ("asked", "prompt_tokens", "completion_tokens")}
        part["cost_usd"] = price.cost(part["prompt_tokens"], 0, part["completion_tokens"])
        for key in ("asked", "prompt_tokens", "completion_tokens"):
            totals[key] += part[key]
        totals.update({f"audit_{key}": value for key, value in part.items()})
    totals["cost_usd"] = price.cost(totals["prompt_tokens"], 0, totals["completion_tokens"])
    if audit:
        spent, asked = totals["cost_usd"], totals["asked"]
        totals["audit_share"] = totals["audit_cost_usd"] / spent if spent else totals["audit_asked"] / max(asked, 1.0)
    return totals


def gplr_metrics(cfg: Config, summary: dict) -> dict[str, float]:
    """A gplr run's numbers: budget, cost ledger, quality (the cross-fitted estimate, and ``audit``, a number
    or a dict of numbers, when the run has one), reach, persona rows and phase times."""
    audit = summary.get("audit")
    metrics = {"budget": float(summary["budget"]), "seconds": float(summary["seconds"]),
               "rows_rewritten": float(summary["rows_rewritten"]),
               **numbers(ledger_totals(cfg, summary["per_round"], audit if isinstance(audit, dict) else None), "ledger"),
               **numbers(summary["reach"], "reach"), **numbers(summary["persona_rows"], "personas"),
               **numbers(summary["phases"], "phase_seconds")}
    if summary.get("assignment_cv_micro_f1") is not None:
        metrics["quality.cross_fitted_micro_f1"] = float(summary["assignment_cv_micro_f1"])
    if isinstance(audit, dict):
        metrics.update(numbers(audit, "quality.audit"))
    elif isinstance(audit, (int, float)):
        metrics["quality.audit"] = float(audit)
    return metrics


def _mlflow(stage: str):
    """The mlflow module, or None after one warning line when it is not installed."""
    try:
        import mlflow
    except ImportError:
        log.warning("mlflow: not installed, the %s run is not tracked (pip install 'persona-spark[mlflow]', or set "
                    "mlflow.enabled=false)", stage)
        return None
    return mlflow


@contextlib.contextmanager
def _tracking_at(mlflow, uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block, then put back: MLflow mirrors it into
    ``$MLFLOW_TRACKING_URI``, which :func:`tracking_uri` reads, and one run's store must not become the next
    run's (nor a notebook's own MLflow runs')."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None: unset again, MLflow's default


def artifact_location(uri: str) -> str | None:
    """Where a new experiment in a SQLite store keeps its artifacts: beside the database file (MLflow's
    default is the working directory); None for other stores, which have their own."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").as_uri()


def _experiment_id(mlflow, uri: str, name: str | None) -> str | None:
    """The id of experiment ``name`` in the store at ``uri``, created when missing (None: MLflow's default).
    By id, not ``mlflow.set_experiment``, so a notebook's active experiment stays as it was."""
    if name is None:
        return None
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name, artifact_location(uri))


def tracked_run(cfg: Config, stage: str, run_name: str, log_to: Callable[[Any], dict | None]) -> dict:
    """Call ``log_to(mlflow)`` inside a new MLflow run (nested in an active one, e.g. a notebook's); what the
    stage's summary says about it: the run's id and experiment, or ``skipped`` and why."""
    conf = cfg.mlflow
    if not conf.enabled:
        return {"skipped": "mlflow.enabled is false"}
    uri = tracking_uri(conf, cfg.tables.root)
    if uri is None:
        log.warning("mlflow: tables.root %s is no local folder, the %s run is not tracked (set mlflow.tracking_uri)",
                    cfg.tables.root, stage)
        return {"skipped": "no tracking URI"}
    mlflow = _mlflow(stage)
    if mlflow is None:
        return {"skipped": "MLflow is not installed"}
    try:
        with _tracking_at(mlflow, uri):
            experiment = _experiment_id(mlflow, uri, experiment_name(conf, uri))
            with mlflow.start_run(experiment_id=experiment, run_name=run_name,
                                  nested=mlflow.active_run() is not None) as run:
                extra = log_to(mlflow) or {}
    except Exception as error:  # bookkeeping: the stage's tables are written already
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        log.warning("mlflow: the %s run was not logged to %s: %s", stage, shown(uri), reason)
        return {"skipped": reason}
    return {"tracking_uri": shown(uri), "experiment_id": run.info.experiment_id, "run_id": run.info.run_id, **extra}


def log_gplr_run(cfg: Config, summary: dict) -> dict:
    """One gplr run (its stage summary) as an MLflow run: settings as params; budget, ledger, quality, reach
    and phase times as metrics; the run id of its Delta writes as the tag ``persona_spark.run_id``; the
    whole summary as ``gplr_summary.json``."""
    def log_to(mlflow) -> None:
        mlflow.set_tags({"persona_spark.stage": "gplr", "persona_spark.run_id": summary["run_id"],
                         "persona_spark.personas_table": summary.get("tables", {}).get("personas", "")})
        mlflow.log_params(gplr_params(cfg, summary))
        mlflow.log_metrics(gplr_metrics(cfg, summary))
        mlflow.log_text(json.dumps(summary, default=str, indent=2), "gplr_summary.json")

    return tracked_run(cfg, "gplr", f"gplr {summary['run_id']}", log_to)


def log_trained_model(cfg: Config, result: TrainResult, run_dir: str, run_id: str) -> dict:
    """One trained model as an MLflow run: the train settings, its test and validation metrics, the loss per
    epoch, and the model in MLflow's torch flavour with the files ``result.save`` wrote to ``run_dir``
    (what cold start loads). The summary's ``model_uri`` is what ``recommend.cold_start.model_uri`` takes."""
    def log_to(mlflow) -> dict:
        import torch
        from mlflow import pytorch as torch_flavour

        mlflow.set_tags({"persona_spark.stage": "train", "persona_spark.run_id": run_id,
                         "persona_spark.model_dir": run_dir})
        mlflow.log_params({**flat(cfg.recommend.train.model_dump(exclude={"seeds"}), "train"), "train.seed": result.seed})
        mlflow.log_metrics(numbers({k: v for k, v in result.summary().items() if k != "seed"}))
        for epoch, loss in enumerate(result.losses, 1):
            mlflow.log_metric("train_loss", loss, step=epoch)
        with tempfile.TemporaryDirectory() as local:
            files = []
            for location in storage.list_files(run_dir):  # a local copy: MLflow reads extra files from disk
                files.append(os.path.join(local, os.path.basename(location)))
                Path(files[-1]).write_bytes(storage.read_bytes(location))
            # pickled (MLflow's torch.export format needs a forward() to trace; the models propagate instead)
            logged = torch_flavour.log_model(result.network.cpu(), name=MODEL_NAME, extra_files=files,
                                               serialization_format="pickle",
                                               pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "persona-spark"])
        return {"model_uri": f"runs:/{mlflow.active_run().info.run_id}/{MODEL_NAME}", "logged_model": logged.model_uri}

    return tracked_run(cfg, "train", f"train {result.model} seed {result.seed}", log_to)


@contextlib.contextmanager
def model_files(cfg: Config, reference: str) -> Iterator[str]:
    """A local folder holding the files of a model the train stage logged (``embeddings.npz``, ``run.json``;
    the downloaded model is its parent folder), for as long as the ``with`` block runs. ``reference``: a model URI (``runs:/<run_id>/model``,
    ``models:/<model_id>``) or a train run's id, found in the tracking store :func:`tracking_uri` names."""
    try:
        import mlflow
        from mlflow import artifacts
    except ImportError as error:
        raise UserError("recommend.cold_start.model_uri needs MLflow: pip install 'persona-spark[mlflow]'") from error
    uri = reference if ":/" in reference else f"runs:/{reference}/{MODEL_NAME}"
    runs_at = tracking_uri(cfg.mlflow, cfg.tables.root)
    # the global URI, not download_artifacts(tracking_uri=...): MLflow resolves runs:/ through the global one
    where = _tracking_at(mlflow, runs_at) if runs_at is not None else contextlib.nullcontext()
    with tempfile.TemporaryDirectory() as local:
        try:
            with where:
                path = artifacts.download_artifacts(artifact_uri=uri, dst_path=local)
        except mlflow.exceptions.MlflowException as error:
            raise UserError(f"recommend.cold_start.model_uri {reference!r}: {' '.join(str(error).split())[:300]}") from error
        yield os.path.join(path, MODEL_FILES)
