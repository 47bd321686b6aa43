"""The labeler a configuration names: the one place where the ``labeling.backend`` string picks a class."""

from __future__ import annotations

from persona_spark.config import LabelingConf
from persona_spark.labeling.base import Labeler
from persona_spark.labeling.batch import OpenAIBatchLabeler
from persona_spark.labeling.embedding import EmbeddingLabeler
from persona_spark.labeling.openai_chat import OpenAILabeler
from persona_spark.labeling.recorded import RecordedLabeler


def labeler_from_config(conf: LabelingConf) -> Labeler:
    """``labeling.backend`` built from its section (``labeling.embedding``, ``.openai`` (with ``.batch``
    for openai_batch), ``.recorded``). A recorded labeler whose recording is a table gets its rows at
    the edge (``RecordedLabeler.with_recordings``)."""
    if conf.backend == "openai_batch":
        return OpenAIBatchLabeler(batch=conf.batch, **conf.openai.model_dump())
    labeler, section = {
        "embedding": (EmbeddingLabeler, conf.embedding),
        "openai": (OpenAILabeler, conf.openai),
        "recorded": (RecordedLabeler, conf.recorded),
    }[conf.backend]
    return labeler(**section.model_dump())
