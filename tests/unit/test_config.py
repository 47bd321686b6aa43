"""Configuration that cannot be misread: one meaning per key, bounds, typed --set values, renamed keys named."""

from __future__ import annotations

import re

import pytest
import yaml
from pydantic import BaseModel

from persona_spark.config import (
    RENAMED_KEYS,
    RUN_LOCATIONS,
    Config,
    GPLRConf,
    config_reference,
    load_config,
    parse_override,
)
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
    ("gplr.rounds=1000000", "gplr.rounds"),
    ("affinity.ell=3000", "affinity.ell"),
    ("gplr.cv_folds=1000", "gplr.cv_folds"),
    ("segment.max_iter=100000", "segment.max_iter"),
    ("labeling.openai.max_attempts=1000", "labeling.openai.max_attempts"),
    ("ingest.encoding=klingon", "ingest.encoding"),
    ("ingest.encoding=cp1252", "ingest.encoding"),
])
def test_a_value_out_of_bounds_fails_at_load_naming_the_key(override, key):
    with pytest.raises(UserError, match=rf"^config: {key}\b"):
        load_config(None, [override])


def test_an_encoding_is_named_for_spark_however_python_spells_it():
    assert [load_config(None, [f"ingest.encoding={name}"]).ingest.charset for name in ("latin-1", "UTF8", "ascii")] \
        == ["iso-8859-1", "utf-8", "us-ascii"]


def test_budget_is_a_fraction_or_a_count_never_both():
    assert load_config(None, ["gplr.budget_users=1"]).gplr.budget_size(1000) == 1
    assert load_config(None, ["gplr.budget_fraction=1"]).gplr.budget_size(1000) == 1000
    assert load_config(None, ["gplr.budget_fraction=0.1"]).gplr.budget_size(1000) == 100
    assert GPLRConf().budget_size(1000) == 50  # neither set: 5 % of the users
    assert GPLRConf(budget_fraction=0.0001).budget_size(1000) == 1  # a fraction asks at least one user
    with pytest.raises(UserError, match="gplr.budget_fraction.*gplr.budget_users.*not both"):
        load_config(None, ["gplr.budget_fraction=0.1", "gplr.budget_users=10"])


def test_the_quality_guard_is_off_by_default_and_needs_an_audit():
    assert GPLRConf().min_audit_micro_f1 is None and GPLRConf().audit_users == 500
    assert load_config(None, ["gplr.min_audit_micro_f1=0.7"]).gplr.min_audit_micro_f1 == 0.7
    with pytest.raises(UserError, match="gplr.min_audit_micro_f1.*gplr.audit_users"):
        load_config(None, ["gplr.min_audit_micro_f1=0.7", "gplr.audit_users=0"])
    with pytest.raises(UserError, match="gplr.min_audit_micro_f1"):
        load_config(None, ["gplr.min_audit_micro_f1=1.5"])


def _nested(key: str, value) -> dict:
    """``a.b.c`` -> ``{"a": {"b": {"c": value}}}``: the key as a YAML file writes it."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


@pytest.mark.parametrize("old, new", sorted(RENAMED_KEYS.items()))
def test_a_renamed_key_fails_naming_its_new_key_in_yaml_and_set(old, new, tmp_path):
    conf = tmp_path / "old.yaml"
    conf.write_text(yaml.safe_dump(_nested(old, 1)))
    for attempt in (lambda: load_config(conf), lambda: load_config(None, [f"{old}=1"])):
        with pytest.raises(UserError, match=rf"^config: {re.escape(old)} is now {re.escape(new)}$"):
            attempt()


def test_every_renamed_key_points_at_a_declared_key():
    fields = {key for key, _ in _fields(Config)}
    sections = {key.rsplit(".", 1)[0] for key in fields if "." in key}
    assert [new for new in RENAMED_KEYS.values() if new not in fields | sections] == []
    assert [old for old in RENAMED_KEYS if old in fields | sections] == []  # an old key never still loads


def test_a_renamed_section_names_the_new_key_of_each_key_under_it(tmp_path):
    conf = tmp_path / "old.yaml"
    conf.write_text(yaml.safe_dump({"generate": {"users": 30, "max_personas": 2, "colour": "red"},
                                    "labeling": {"generate": {"method": "paper"}}}, sort_keys=False))
    with pytest.raises(UserError) as error:
        load_config(conf)
    assert str(error.value) == (
        "config: labeling.generate.method is now labeling.persona_generation.method; "
        "generate.users is now demo.users; generate.max_personas is now demo.personas_per_customer_max; "
        "generate.colour: unknown key (generate is now demo)")
    assert load_config(None, ["demo.users=30", "demo.personas_per_customer_max=2"]).demo.users == 30


def test_one_checkpoint_setting_for_every_stage():
    assert load_config(None, ["spark.checkpoint=reliable"]).spark.checkpoint == "reliable"
    assert "checkpoint" not in Config.model_fields["affinity"].annotation.model_fields
    with pytest.raises(UserError, match=r"spark\.checkpoint: Input should be 'local' or 'reliable'"):
        load_config(None, ["spark.checkpoint=sometimes"])


def test_run_locations_follow_root_into_the_nested_sections(tmp_path):
    cfg = load_config(None, [f"root={tmp_path}", f"recommend.train.model_dir={tmp_path / 'elsewhere'}"])
    assert len(cfg.run_locations()) == len(RUN_LOCATIONS)
    assert cfg.recommend.export.dir == str(tmp_path / "recommend" / "export")
    assert cfg.recommend.train.eigen_cache_dir == str(tmp_path / "recommend" / "eigen_cache")
    assert cfg.recommend.train.model_dir == str(tmp_path / "elsewhere")
    assert cfg.labeling.persona_generation.output == str(tmp_path / "personas" / "generated.yaml")


def test_the_two_price_sets_keep_their_own_defaults_when_one_price_is_set():
    openai = load_config(None, ["labeling.openai.batch_prices.prompt=0.5"]).labeling.openai
    assert (openai.batch_prices.prompt, openai.batch_prices.cached_prompt) == (0.5, 0.0000375)
    assert openai.prices.cached_prompt == 0.000075


def test_set_values_are_parsed_by_the_declared_type():
    cfg = load_config(None, [
        "tables.schema=no", "labeling.openai.json_mode=off", "labeling.user_prompt=123", "ingest.source=null",
        "spark.ui_enabled=no", "recommend.train.lr=1e-4", "segment.ks=[2, 3]", "gplr.budget_users=30",
        "spark.extra.spark.executor.memory=2g", "tables.names.transactions=yes",
    ])
    assert (cfg.tables.schema_, cfg.labeling.openai.json_mode, cfg.labeling.user_prompt) == ("no", "off", "123")
    assert cfg.ingest.source is None and cfg.spark.ui_enabled is False
    assert cfg.recommend.train.lr == 1e-4 and cfg.segment.ks == [2, 3] and cfg.gplr.budget_users == 30
    assert cfg.spark.extra == {"spark.executor.memory": "2g"} and cfg.tables.names == {"transactions": "yes"}
    assert parse_override("train.device=no", Config.model_fields["recommend"].annotation) == ("train.device", "no")


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
    assert "| `spark.checkpoint` | `Literal['local', 'reliable']` | `'local'` |" in reference
    assert "`labeling.openai.batch_prices.cached_prompt` | `float, >= 0` | `3.75e-05`" in reference
