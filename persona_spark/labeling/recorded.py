"""``RecordedLabeler``: replays labels an LLM gave earlier (e.g. the paper's GPT-4 labels), only for
the entities asked, so a budget stays honest."""

from __future__ import annotations

import json
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from persona_spark.config import LabelingConf, RecordedConf
from persona_spark.labeling.base import BoundLabeler, CacheKey, EntityKind, LabelCache, Labeler
from persona_spark.personas import PersonaSet
from persona_spark.runtime.frames import require_columns


class BoundRecordedLabeler(BoundLabeler):
    """Labels another model gave, joined to the asked entities only (so the budget stays honest)."""

    def __init__(self, conf: RecordedConf, persona_set: PersonaSet, id_col: str, recording: DataFrame):
        """``recording``: ``<id_col>, persona_idx array<int>``, the rows of ``recorded.table`` or
        ``read_recording(recorded.path)``."""
        if not conf.path and not conf.table:
            raise ValueError("labeling.backend=recorded needs labeling.recorded.path or labeling.recorded.table")
        require_columns(recording, [id_col, "persona_idx"], f"recorded labels {conf.table or conf.path!r}")
        self.conf = conf
        self.id_col = id_col
        self.persona_set = persona_set
        self.recording = recording.select(F.col(id_col).cast("int"), F.col("persona_idx").cast("array<int>"))
        source = Path(conf.path).stem if conf.path else conf.table
        self.key = CacheKey(conf.model or f"recorded:{source}", "recorded", persona_set.version)

    def label(self, requests: DataFrame, journal_folder: str | None = None) -> DataFrame:
        n = len(self.persona_set)
        names = F.array(*[F.lit(name) for name in self.persona_set.names])
        joined = requests.select(self.id_col, "history_hash").join(self.recording, self.id_col, "left")
        idx = F.col("persona_idx")
        out_of_range = F.exists(idx, lambda i: (i < 0) | (i >= n))
        status = (
            F.when(idx.isNull() | (F.size(idx) == 0), "unrepresentable").when(out_of_range, "error").otherwise("ok")
        )
        error = F.when(
            out_of_range,
            F.concat(F.lit(f"recorded persona index outside the persona set of {n}: "), F.array_join(idx, ",")),
        )
        ok = status == "ok"
        return joined.select(
            F.col(self.id_col).cast("int"),
            F.when(ok, F.transform(idx, lambda i: F.element_at(names, i + 1))).otherwise(F.array().cast("array<string>")).alias("personas"),
            F.when(ok, idx).otherwise(F.array().cast("array<int>")).alias("persona_idx"),
            status.alias("status"),
            error.alias("error"),
            F.lit(self.key.model).alias("model"),
            F.lit(self.key.prompt_version).alias("prompt_version"),
            F.lit(self.key.persona_set_version).alias("persona_set_version"),
            "history_hash",
            F.lit(0).alias("prompt_tokens"),
            F.lit(0).alias("completion_tokens"),
            F.lit(0).alias("latency_ms"),
            F.lit(0).alias("attempts"),
            F.when(idx.isNull(), F.lit("not in the recording")).otherwise(F.to_json(idx)).alias("answer"),
            F.current_timestamp().alias("ts"),
            F.lit(0).alias("cached_prompt_tokens"),
            F.lit("offline").alias("channel"),
        )


def read_recording(spark, path: str, id_col: str) -> DataFrame:
    """A recording file ``{id: [persona_idx, ...]}`` (e.g. the paper's GPT-4 labels) as ``<id_col>, persona_idx``."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{id: [persona_idx, ...]}}")
    rows = []
    for key, value in data.items():
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise ValueError(f"{path}: entry {key!r} must be a list of persona indices, got {value!r}")
        rows.append((int(key), value))
    return spark.createDataFrame(rows, f"{id_col} int, persona_idx array<int>")


class RecordedLabeler(Labeler):
    """Replays a recording; the keyword arguments are the fields of ``labeling.recorded``
    (``RecordedLabeler(path="labels.json", item_path="item_labels.json")``). A recording kept in a
    table is read at the edge and handed over with ``with_recordings``."""

    section = RecordedConf
    backend = "recorded"

    def __init__(self, **fields):
        super().__init__(**fields)
        self.recordings: dict[str, DataFrame] = {}

    def with_recordings(self, user: DataFrame | None = None, item: DataFrame | None = None) -> RecordedLabeler:
        """A copy that replays these rows (``<user_idx|item_idx>, persona_idx``: the rows of ``table`` /
        ``item_table`` as the caller read them) instead of reading ``path`` / ``item_path``."""
        copy = type(self)(**self.conf.model_dump())
        copy.recordings = {**self.recordings, **{k: v for k, v in (("user", user), ("item", item)) if v is not None}}
        return copy

    def bind(self, labeling: LabelingConf, persona_set: PersonaSet, kind: EntityKind,
             cache: LabelCache) -> BoundRecordedLabeler:
        conf = self.conf
        if kind.name == "item":  # items replay their own recording
            conf = conf.model_copy(update={"path": conf.item_path, "table": conf.item_table})
        recording = self.recordings.get(kind.name)
        if recording is None:
            if conf.table or not conf.path:
                raise ValueError("labeling.backend=recorded needs labeling.recorded.path, or the rows of "
                                 "labeling.recorded.table passed as recording")
            recording = read_recording(cache.spark, conf.path, kind.id_col)
        return BoundRecordedLabeler(conf, persona_set, kind.id_col, recording)
