"""Item labelling that follows what a run uses: the items its prototypes bought, or the most bought ones."""

from __future__ import annotations

from pyspark.sql import functions as F

from persona_spark import gplr
from persona_spark.config import GPLRConf
from persona_spark.stages import STAGES, RunContext
from persona_spark.testing.openai_server import LoopbackChatServer, obedient
from tests.spark.test_gplr import _demo_config, _prepare, shop  # noqa: F401 (module fixture: the prepared demo shop)


def test_edge_share_keeps_the_most_bought_items_up_to_the_share(spark):
    # item 0: 5 train edges, item 1: 3, items 2 and 3: 1 each (10 in all); ties broken by the lower index
    buys = [(u, 0) for u in range(5)] + [(u, 1) for u in range(3)] + [(0, 2), (1, 3)]
    edges = spark.createDataFrame(buys, "user_idx int, item_idx int")

    def picked(share):
        conf = GPLRConf(item_labels="edge_share", item_edge_share=share)
        return sorted(r.item_idx for r in gplr.items_to_label(edges, None, conf).collect())

    # an item is kept while the items before it carry less than the share
    assert (picked(0.5), picked(0.51), picked(0.8), picked(0.9), picked(1.0)) == ([0], [0, 1], [0, 1], [0, 1, 2], [0, 1, 2, 3])
    prototypes = spark.createDataFrame([(3, 7), (3, 8), (1, 7)], "user_idx int, persona_idx int")
    bought = gplr.items_to_label(edges, prototypes, GPLRConf(item_labels="prototypes"))
    assert sorted(r.item_idx for r in bought.collect()) == [0, 1, 3]  # user 1: items 0, 1, 3; user 3: item 0
    assert gplr.items_to_label(edges, prototypes, GPLRConf()) is None  # all: every item


def test_a_run_labels_the_items_its_prototypes_bought_and_a_rerun_pays_nothing(spark, shop, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("ITEM_TEST_KEY", "sk-test")
    with LoopbackChatServer(obedient(lambda entity: ["Pet Lover"])) as server:
        cfg = _demo_config(tmp_path, "labeling.backend=openai", f"labeling.openai.base_url={server.base_url}",
                           "labeling.openai.model=loopback-model", "labeling.openai.api_key_env=ITEM_TEST_KEY",
                           "gplr.item_signal=true", "gplr.item_labels=prototypes")
        store = _prepare(cfg, spark, shop)
        first = STAGES["gplr"](RunContext(cfg, store))
        ok = store.read_table("gplr_prototypes").filter("status = 'ok'")
        train = store.read_table("edges").filter(F.col("split") == "train")
        bought = {r.item_idx for r in train.join(ok, "user_idx", "left_semi").select("item_idx").distinct().collect()}
        labelled = {r.item_idx for r in store.read_table("item_labels").collect()}
        assert labelled == bought and first["items_labelled"] == len(bought) < first["items"]
        asked = server.request_count
        second = STAGES["gplr"](RunContext(cfg, store))
        assert server.request_count == asked  # the same prototypes and products: every answer from the caches
        assert second["items_labelled"] == len(bought) and store.read_table("item_labels").count() == len(bought)
