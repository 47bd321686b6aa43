"""Configuration that cannot be misread: one meaning per budget knob, bounds, typed --set values."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from persona_spark.config import Config, GPLRConf, config_reference, load_config, parse_override
from persona_spark.errors import UserError


def _fields(model: type[BaseModel], prefix: str = ""):
    for name, info in model.model_fields.items():
        key = f"{prefix}{info.alias or name}"
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _fields(annotation, key + ".")
        else:
            yield key, info


def test_every_number_is_bounded_and_every_key_described():
    unbounded, undescribed = [], []
    for key, info in _fields(Config):
        kinds = {info.annotation} | set(getattr(info.annotation, "__args__", ()))
        if kinds & {int, float} and not any(
                getattr(meta, bound, None) is not None for meta in info.metadata for bound in ("ge", "gt", "le", "lt")):
            unbounded.append(key)
        if not info.description:
            undescribed.append(key)
    assert unbounded == [] and undescribed == []


@pytest.mark.parametrize("override, key", [
    ("labeling.chunk_size=0", "labeling.chunk_size"),
    ("graph.test_fraction=1", "graph.test_fraction"),
    ("segment.ks=[1,5]", "segment.ks"),
    ("labeling.openai.temperature=-1", "labeling.openai.temperature"),
    ("gplr.budget_fraction=1.5", "gplr.budget_fraction"),
    ("gplr.budget_users=0", "gplr.budget_users"),
])
def test_a_value_out_of_bounds_fails_at_load_naming_the_key(override, key):
    with pytest.raises(UserError, match=rf"^config: {key}\b"):
        load_config(None, [override])


def test_budget_is_a_fraction_or_a_count_never_both():
    assert load_config(None, ["gplr.budget_users=1"]).gplr.budget_size(1000) == 1
    assert load_config(None, ["gplr.budget_fraction=1"]).gplr.budget_size(1000) == 1000
    assert load_config(None, ["gplr.budget_fraction=0.1"]).gplr.budget_size(1000) == 100
    assert GPLRConf().budget_size(1000) == 50  # neither set: 5 % of the users
    assert GPLRConf(budget_fraction=0.0001).budget_size(1000) == 1  # a fraction asks at least one user
    with pytest.raises(UserError, match="gplr.budget_fraction.*gplr.budget_users.*not both"):
        load_config(None, ["gplr.budget_fraction=0.1", "gplr.budget_users=10"])


def test_the_old_budget_key_is_refused_naming_the_new_ones(tmp_path):
    conf = tmp_path / "old.yaml"
    conf.write_text("gplr:\n  budget: 1\n")
    for attempt in (lambda: load_config(conf), lambda: load_config(None, ["gplr.budget=0.05"])):
        with pytest.raises(UserError, match="gplr.budget_fraction.*gplr.budget_users"):
            attempt()


def test_set_values_are_parsed_by_the_declared_type():
    cfg = load_config(None, [
        "tables.schema=no", "labeling.openai.json_mode=off", "labeling.user_prompt=123", "ingest.source=null",
        "spark.ui_enabled=no", "recommend.lr=1e-4", "segment.ks=[2, 3]", "gplr.budget_users=30",
        "spark.extra.spark.executor.memory=2g", "tables.names.transactions=yes",
    ])
    assert (cfg.tables.schema_, cfg.labeling.openai.json_mode, cfg.labeling.user_prompt) == ("no", "off", "123")
    assert cfg.ingest.source is None and cfg.spark.ui_enabled is False
    assert cfg.recommend.lr == 1e-4 and cfg.segment.ks == [2, 3] and cfg.gplr.budget_users == 30
    assert cfg.spark.extra == {"spark.executor.memory": "2g"} and cfg.tables.names == {"transactions": "yes"}
    assert parse_override("device=no", Config.model_fields["recommend"].annotation) == ("device", "no")


def test_unknown_key_names_the_key_and_the_likely_one():
    with pytest.raises(UserError, match=r"gplr\.rounds_: unknown key \(did you mean gplr\.rounds\?\)"):
        load_config(None, ["gplr.rounds_=3"])


def test_a_missing_config_file_is_a_user_error_naming_it(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_reference_documents_descriptions_and_bounds():
    reference = config_reference()
    assert "| `labeling.chunk_size` | `int, >= 1` | `5000` | entities labeled and committed" in reference
    assert "`gplr.budget_users`" in reference and "`gplr.budget` " not in reference
