"""What labeling costs, priced like the bill: uncached prompt, cached prompt and completion tokens,
at the synchronous or the Batch API rates (``labeling.openai.prices`` and ``labeling.openai.batch_prices``)."""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column
from pyspark.sql import functions as F

from persona_spark.config import OpenAIConf

CHANNELS = ("sync", "batch")


@dataclass(frozen=True)
class Rates:
    """USD per 1k tokens."""

    prompt: float
    cached_prompt: float
    completion: float

    def cost(self, prompt_tokens: float, cached_prompt_tokens: float, completion_tokens: float) -> float:
        uncached = max(prompt_tokens - cached_prompt_tokens, 0)
        return (uncached * self.prompt + cached_prompt_tokens * self.cached_prompt + completion_tokens * self.completion) / 1000


def rates(conf: OpenAIConf, channel: str) -> Rates:
    prices = conf.batch_prices if channel == "batch" else conf.prices
    return Rates(prices.prompt, prices.cached_prompt, prices.completion)


def price_table(conf: OpenAIConf) -> dict[str, Rates]:
    return {channel: rates(conf, channel) for channel in CHANNELS}


def cost_column(prices: dict[str, Rates], columns: list[str]) -> Column:
    """USD of each label row, at its channel's rates; offline rows and rows without a channel cost
    what their tokens cost synchronously (0 for offline labelers, which use no tokens)."""
    cached = F.coalesce(F.col("cached_prompt_tokens"), F.lit(0)) if "cached_prompt_tokens" in columns else F.lit(0)
    prompt, completion = F.coalesce(F.col("prompt_tokens"), F.lit(0)), F.coalesce(F.col("completion_tokens"), F.lit(0))
    channel = F.col("channel") if "channel" in columns else F.lit("sync")

    def at(r: Rates) -> Column:
        return (F.greatest(prompt - cached, F.lit(0)) * r.prompt + cached * r.cached_prompt + completion * r.completion) / 1000

    return F.when(channel == "batch", at(prices["batch"])).otherwise(at(prices["sync"]))
