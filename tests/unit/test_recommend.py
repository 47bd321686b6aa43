"""Recommender: metrics by hand, masking, the eigenvector cache, training."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from persona_spark.config import RecommendTrainConf  # noqa: E402
from persona_spark.recommend.data import RecData, load_gplr_json, read_directory, write_directory  # noqa: E402
from persona_spark.recommend.metrics import evaluate, f1_at_k, hit_matrix, ndcg_at_k, recall_at_k  # noqa: E402
from persona_spark.recommend.models import (  # noqa: E402
    DECORRELATED,
    MODELS,
    WITH_PERSONAS,
    adaptive_layer_weights,
    afd_blocks,
    afd_loss,
    build_model,
    column_correlation,
)
from persona_spark.recommend.spectral import EigenCache, normalized_adjacency, top_eigenpairs  # noqa: E402
from persona_spark.recommend.train import decorrelation_weight, train  # noqa: E402
from tests.conftest import shared_path  # noqa: E402
from tests.recommend_world import FAST as BASE  # noqa: E402
from tests.recommend_world import planted_world  # noqa: E402

FAST = {**BASE, "decorrelation_weight": 0.01}


# ---- metrics ------------------------------------------------------------------------------
def test_metrics_match_hand_computed_values():
    hits = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    n_relevant = np.array([2, 5, 1])
    # user 0: DCG = 1/log2(2) + 1/log2(4) = 1.5; ideal over min(2, 3) = 2 hits = 1 + 1/log2(3)
    # user 1: DCG = 1/log2(3); ideal over min(5, 3) = 3 hits = 1 + 1/log2(3) + 1/log2(4)
    expected_ndcg = [1.5 / (1 + 1 / math.log2(3)), (1 / math.log2(3)) / (1.5 + 1 / math.log2(3)), 0.0]
    np.testing.assert_allclose(ndcg_at_k(hits, n_relevant, 3), expected_ndcg)
    # user 0: P = 2/3, R = 1 -> F1 = 0.8; user 1: P = 1/3, R = 1/5 -> F1 = 0.25; user 2: no hit -> 0
    np.testing.assert_allclose(f1_at_k(hits, n_relevant, 3), [0.8, 0.25, 0.0])
    np.testing.assert_allclose(recall_at_k(hits, n_relevant, 1), [0.5, 0.0, 0.0])


def test_hit_matrix_looks_up_each_rows_own_relevant_set():
    relevant = (np.array([0, 2, 2, 3]), np.array([1, 4, 0]))  # row 0: {1, 4}, row 1: {}, row 2: {0}
    top = np.array([[4, 0, 1], [0, 1, 2]])
    assert hit_matrix(top, np.array([0, 2]), relevant).tolist() == [[True, False, True], [True, False, False]]


def test_training_items_are_masked_and_users_without_test_items_skipped():
    # one dimension: item scores are 5, 4, 3, 2, 1 for every user
    items = torch.tensor([[5.0], [4.0], [3.0], [2.0], [1.0]])
    users = torch.ones(3, 1)
    train_pairs = np.array([[0, 0], [0, 1], [1, 0]])
    test_pairs = np.array([[0, 2], [1, 4]])  # user 2 has no test item: skipped
    masked = evaluate(users, items, test_pairs, train_pairs, ks=(1, 2))
    # user 0 ranks 2, 3, 4 (items 0, 1 masked) -> hit at rank 1; user 1 ranks 1, 2, 3 -> no hit in top 2
    assert masked["evaluated"] == 2
    assert masked["ndcg@1"] == pytest.approx(0.5) and masked["recall@2"] == pytest.approx(0.5)
    unmasked = evaluate(users, items, test_pairs, None, ks=(1, 2))
    assert unmasked["ndcg@1"] == 0.0


# ---- data ---------------------------------------------------------------------------------
def test_validation_split_is_disjoint_and_keeps_every_user(tmp_path):
    data = planted_world()
    fit, validation = data.split_validation(0.3, seed=1)
    assert len(fit.train) + len(validation) == len(data.train) and len(validation) > 0.15 * len(data.train)
    assert not set(map(tuple, fit.train)) & set(map(tuple, validation))
    assert set(fit.train[:, 0]) == set(data.train[:, 0])
    assert np.array_equal(data.split_validation(0.3, seed=1)[1], validation)


def test_directory_round_trip_and_bad_rows_named(tmp_path):
    data = planted_world()
    back = read_directory(write_directory(data, tmp_path / "export"))
    for name in ("train", "test", "user_personas", "item_personas"):
        assert np.array_equal(getattr(back, name), getattr(data, name))
    assert back.persona_names == data.persona_names and back.n_items == data.n_items
    with pytest.raises(ValueError, match=r"train.item_idx: row 1 has 80, outside 0..79"):
        RecData(n_users=2, n_items=80, n_personas=1, train=np.array([[0, 1], [1, 80]]))
    with pytest.raises(FileNotFoundError, match="export"):
        read_directory(tmp_path / "nothing")


def test_paper_split_loads_with_published_counts():
    data = load_gplr_json(shared_path("online_retail_gplr"))
    assert (data.n_users, data.n_items, data.n_personas) == (4297, 3846, 20)
    assert (len(data.train), len(data.test)) == (208_956, 54_311)
    assert len(np.unique(data.user_personas[:, 0])) == 4286


# ---- graph and eigenvectors ---------------------------------------------------------------
def test_normalized_adjacency_of_tripartite_graph():
    data = RecData(n_users=2, n_items=1, n_personas=1, train=np.array([[0, 0], [1, 0]]),
                   user_personas=np.array([[0, 0]]), item_personas=np.array([[0, 0]]))
    adjacency = normalized_adjacency(data, with_personas=True).toarray()
    # nodes: user0, user1, item0, persona0; degrees 2, 1, 3, 2
    degrees = np.array([2, 1, 3, 2])
    edges = np.zeros((4, 4))
    for a, b in ((0, 2), (1, 2), (0, 3), (2, 3)):
        edges[a, b] = edges[b, a] = 1
    np.testing.assert_allclose(adjacency, edges / np.sqrt(np.outer(degrees, degrees)))
    assert normalized_adjacency(data, with_personas=False).shape == (3, 3)


def test_lobpcg_basis_matches_dense_eigendecomposition():
    rng = np.random.default_rng(3)
    pairs = np.unique(np.stack([rng.integers(0, 400, 4000), rng.integers(0, 300, 4000)], 1), axis=0)
    matrix = normalized_adjacency(RecData(n_users=400, n_items=300, n_personas=0, train=pairs), False)
    values, vectors = top_eigenpairs(matrix, 10)
    dense = np.linalg.eigvalsh(matrix.toarray())[::-1][:10]
    np.testing.assert_allclose(values, dense, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(matrix @ vectors - vectors * values, axis=0), 0, atol=1e-3)


def test_eigenvector_cache_is_reused_per_graph(tmp_path):
    data = planted_world()
    matrix = normalized_adjacency(data, with_personas=True)
    first = EigenCache(tmp_path)
    values, vectors = first.lowpass_basis(matrix, 12)
    assert (first.hits, first.misses) == (0, 1) and len(list(tmp_path.glob("eig-*.npz"))) == 1
    second = EigenCache(tmp_path)  # a new process would see only the files
    again = second.lowpass_basis(matrix, 12)
    assert (second.hits, second.misses) == (1, 0)
    np.testing.assert_array_equal(again[1], vectors)
    second.lowpass_basis(normalized_adjacency(data, with_personas=False), 12)
    assert second.misses == 1 and len(list(tmp_path.glob("eig-*.npz"))) == 2


# ---- models and training ------------------------------------------------------------------
def test_column_correlation_is_zero_for_orthogonal_centred_columns_and_grows_with_correlation():
    independent = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert float(column_correlation(independent)) == pytest.approx(0.0, abs=1e-6)
    # orthonormal columns of a centred matrix are centred too: every pairwise Pearson correlation is 0
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(50, 8, generator=generator, dtype=torch.float64)
    orthogonal, _ = torch.linalg.qr(raw - raw.mean(0))
    assert float(column_correlation(orthogonal)) == pytest.approx(0.0, abs=1e-6)
    # scaled or shifted columns are still perfectly correlated: one pair -> 1, three equal columns -> √3
    copied = torch.stack([independent[:, 0], 3 * independent[:, 0] + 5], 1)
    assert float(column_correlation(copied)) == pytest.approx(1.0, abs=1e-5)
    assert float(column_correlation(independent[:, :1].repeat(1, 3))) == pytest.approx(math.sqrt(3), abs=1e-5)
    # the same as torch.corrcoef's upper triangle (the authors' loss.py) on generic data
    mixed = raw @ torch.randn(8, 8, generator=generator, dtype=torch.float64)
    assert float(column_correlation(mixed)) == pytest.approx(float(mixed.T.corrcoef().triu(1).norm()), rel=1e-6)
    assert float(column_correlation(mixed)) > 0.5


def test_adaptive_weights_are_normalised_inverse_correlations_without_gradient():
    correlations = torch.tensor([1.0, 2.0, 4.0], requires_grad=True)
    weights = adaptive_layer_weights(correlations)
    torch.testing.assert_close(weights, torch.tensor([4.0, 2.0, 1.0]) / 7)
    # as in the authors' code: the more correlated layer gets the smaller weight, each weighted term
    # w_l·C_l equals 1/Σ(1/C_k), and the weights are constants of the step
    assert weights[0] > weights[1] > weights[2] and float(weights.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(weights * correlations.detach(), torch.full((3,), 4 / 7))
    assert not weights.requires_grad


def test_afd_loss_weights_each_layer_and_sums_users_and_items():
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(40, 4, generator=generator)
    loose = base.clone().requires_grad_()  # nearly uncorrelated columns
    tight = torch.cat([base[:, :2], base[:, :2] + 0.1 * base[:, 2:]], 1).requires_grad_()  # correlated pairs
    c_loose, c_tight = float(column_correlation(loose.detach())), float(column_correlation(tight.detach()))
    assert c_tight > 2 * c_loose
    loss = afd_loss([[loose, tight]])
    w_loose = (1 / c_loose) / (1 / c_loose + 1 / c_tight)
    w_tight = 1 - w_loose
    assert w_loose > w_tight
    assert float(loss.detach()) == pytest.approx(w_loose * c_loose + w_tight * c_tight, rel=1e-5)
    loss.backward()
    # the gradient is Σ w_l ∇C_l with the weights held fixed (the authors' torch.tensor(list) detaches)
    expected_loose = torch.autograd.grad(column_correlation(loose), loose)[0] * w_loose
    expected_tight = torch.autograd.grad(column_correlation(tight), tight)[0] * w_tight
    torch.testing.assert_close(loose.grad, expected_loose)
    torch.testing.assert_close(tight.grad, expected_tight)
    # blocks (users, items) are weighted separately and summed
    single = float(afd_loss([[loose.detach()]]))
    both = afd_loss([[loose.detach(), tight.detach()], [loose.detach()]])
    assert float(both) == pytest.approx(float(loss.detach()) + single)


def test_decorrelated_layers_of_lightgcn_and_lgcn3():
    data = planted_world()
    lightgcn = build_model("afdgcf", data, dim=8, eigen_k=16, lightgcn_layers=3, persona_edge_weight=1.0)
    final, layers = lightgcn.decorrelated_layers()
    assert len(layers) == 3  # layers 1..L, not the ego layer 0
    ego = lightgcn.embedding.weight
    adjacency = lightgcn.adjacency.to_dense()
    torch.testing.assert_close(layers[1], adjacency @ adjacency @ ego)
    torch.testing.assert_close(final, (ego + sum(layers)) / 4)
    torch.testing.assert_close(final, lightgcn.propagate())
    blocks = afd_blocks(lightgcn, layers)
    assert [len(b) for b in blocks] == [3, 3] and blocks[0][0].shape == (data.n_users, 8)  # no persona block
    lgcn3 = build_model("algcn3", data, dim=8, eigen_k=16, lightgcn_layers=3, persona_edge_weight=1.0)
    final, layers = lgcn3.decorrelated_layers()
    assert len(layers) == 1 and layers[0] is final  # the pooled E0 + ½E1, as the GPLR authors' A-LGCN3
    torch.testing.assert_close(final, lgcn3.propagate())
    shapes = [block[0].shape[0] for block in afd_blocks(lgcn3, layers)]
    assert shapes == [data.n_users, data.n_items, data.n_personas]


def test_model_names_agree_between_config_and_models():
    import typing

    assert typing.get_args(RecommendTrainConf.model_fields["model"].annotation) == MODELS
    assert DECORRELATED == {"afdgcf", "algcn3"} and DECORRELATED <= set(MODELS) and WITH_PERSONAS <= set(MODELS)
    # unset α: each model its own (AFDGCF the authors' 1e-4); a set α applies to both; others get none
    defaults, set_alpha = RecommendTrainConf(), RecommendTrainConf(decorrelation_weight=0.5)
    assert [decorrelation_weight(defaults, m) for m in ("afdgcf", "algcn3", "lightgcn")] == [1e-4, 0.1, 0.0]
    assert [decorrelation_weight(set_alpha, m) for m in ("afdgcf", "algcn3", "lgcn3")] == [0.5, 0.5, 0.0]


def test_afdgcf_lowers_layer_correlation_against_plain_lightgcn(tmp_path):
    data = planted_world()
    conf = {**FAST, "max_epochs": 4, "patience": 4}

    def layer_correlation(alpha: float) -> float:
        model = "afdgcf" if alpha else "lightgcn"
        result = train(data, RecommendTrainConf(**{**conf, "decorrelation_weight": alpha}), seed=0, model_name=model)
        return float(column_correlation(torch.as_tensor(result.user_embeddings)))

    plain, decorrelated = layer_correlation(0.0), layer_correlation(1.0)
    assert decorrelated < 0.8 * plain, (plain, decorrelated)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_on_cpu_reduces_loss_and_beats_chance(model, tmp_path):
    data = planted_world()
    result = train(data, RecommendTrainConf(**FAST), seed=0, model_name=model, cache=EigenCache(tmp_path))
    assert result.device == "cpu" and 1 <= result.best_epoch <= result.epochs <= FAST["max_epochs"]
    assert result.losses[-1] < result.losses[0]
    # a random ranking of the 74 unbought items finds ~2 of 80 items: NDCG@10 ~ 0.09
    assert result.metrics["ndcg@10"] > 0.25, result.summary()
    assert result.user_embeddings.shape == (data.n_users, 16)
    has_personas = model in WITH_PERSONAS
    assert (result.persona_embeddings is not None) == has_personas
    saved = result.save(str(tmp_path / model), data)
    assert saved == str(tmp_path / model)
    run = json.loads((tmp_path / model / "run.json").read_text())
    assert run["model"] == model and run["ndcg@10"] == result.metrics["ndcg@10"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU check: no CUDA device here (CI never has one)")
@pytest.mark.parametrize("model", ["lightgcn", "lgcn3"])
def test_training_on_cuda_with_mixed_precision(model, tmp_path):
    data = planted_world()
    result = train(data, RecommendTrainConf(**{**FAST, "device": "auto", "amp": True}), seed=0, model_name=model,
                   cache=EigenCache(tmp_path))
    assert result.device.startswith("cuda")
    assert result.losses[-1] < result.losses[0] and result.metrics["ndcg@10"] > 0.25, result.summary()
    assert result.user_embeddings.dtype == np.float32 and np.isfinite(result.item_embeddings).all()


def test_early_stopping_selects_on_validation_not_test():
    data = planted_world()
    conf = RecommendTrainConf(**{**FAST, "max_epochs": 30, "patience": 2, "lr": 0.05})
    result = train(data, conf, seed=1, model_name="mf")
    assert result.epochs < 30 and result.epochs - result.best_epoch == 2
    # the test split is never looked at while training: other test edges, the same training run
    rng = np.random.default_rng(5)
    other_test = np.stack([rng.permutation(data.test[:, 0]), rng.integers(0, data.n_items, len(data.test))], 1)
    again = train(dataclasses.replace(data, test=other_test), conf, seed=1, model_name="mf")
    assert (again.epochs, again.best_epoch, again.losses) == (result.epochs, result.best_epoch, result.losses)


def test_batch_rows_propagate_like_the_full_graph():
    from persona_spark.recommend.models import build_model

    data = planted_world()
    for name in ("lightgcn", "lgcn3"):
        model = build_model(name, data, dim=8, eigen_k=16, lightgcn_layers=2, persona_edge_weight=1.0)
        rows = torch.tensor([0, 5, data.n_users + 3, 5])
        torch.testing.assert_close(model.propagate_rows(rows), model.propagate()[rows])


def test_lgcn3_without_persona_edges_is_an_error():
    data = RecData(n_users=2, n_items=2, n_personas=3, train=np.array([[0, 0], [1, 1]]))
    with pytest.raises(ValueError, match="persona edges"):
        train(data, RecommendTrainConf(**FAST), seed=0, model_name="lgcn3")
