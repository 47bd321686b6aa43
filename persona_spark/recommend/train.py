"""BPR training with honest model selection, and saving what cold start and serving need.

A validation split is carved out of the training edges; the model trains on the rest, the epoch
with the best validation NDCG@10 is kept (early stopping), and the test split is scored once,
at the end, with every training purchase (validation included) masked.
"""

from __future__ import annotations

import io
import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from persona_spark.config import RecommendTrainConf
from persona_spark.recommend.data import RecData
from persona_spark.recommend.metrics import evaluate
from persona_spark.recommend.models import (
    DECORRELATED,
    DEFAULT_DECORRELATION,
    Recommender,
    afd_blocks,
    afd_loss,
    build_model,
)
from persona_spark.recommend.spectral import EigenCache
from persona_spark.tables import storage

log = logging.getLogger(__name__)
SELECTION_METRIC = "ndcg@10"


@dataclass
class TrainResult:
    model: str
    seed: int
    metrics: dict[str, float]  # test split, scored once with the selected epoch
    val_ndcg: float  # best validation NDCG@10 (the selection criterion)
    best_epoch: int
    epochs: int  # epochs actually run (early stopping may end before max_epochs)
    seconds: float
    device: str
    losses: list[float] = field(default_factory=list)
    user_embeddings: np.ndarray | None = field(default=None, repr=False)
    item_embeddings: np.ndarray | None = field(default=None, repr=False)
    persona_embeddings: np.ndarray | None = field(default=None, repr=False)
    network: torch.nn.Module | None = field(default=None, repr=False)  # the trained model (MLflow logs it)

    def summary(self) -> dict:
        """The JSON-able record of a run (one benchmark line, one ``recommend_runs`` row)."""
        return {"model": self.model, "seed": self.seed, **self.metrics, "val_ndcg@10": self.val_ndcg,
                "best_epoch": self.best_epoch, "epochs": self.epochs, "seconds": round(self.seconds, 2),
                "device": self.device}

    def save(self, directory: str, data: RecData) -> str:
        """Write the run under ``directory``: ``embeddings.npz`` (for a model with personas also what
        cold start needs from ``data``, the graph it was trained on) and the summary ``run.json``."""
        from persona_spark.recommend.coldstart import EMBEDDINGS_FILE, graph_counts, persona_centroids

        personas = self.persona_embeddings if self.persona_embeddings is not None else np.empty((0, 0), np.float32)
        cold_start = ({**graph_counts(data), "user_centroids": persona_centroids(data, self.user_embeddings, personas)}
                      if len(personas) else {})
        buffer = io.BytesIO()
        np.savez(buffer, users=self.user_embeddings, items=self.item_embeddings,
                 personas=personas, persona_names=np.array(data.persona_names, dtype=str), **cold_start)
        directory = str(directory)
        storage.write_bytes(storage.join(directory, EMBEDDINGS_FILE), buffer.getvalue())
        storage.write_text(storage.join(directory, "run.json"), json.dumps({**self.summary(), "losses": self.losses}, indent=2))
        return directory


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def sample_negatives(users: torch.Tensor, n_items: int, positive_keys: torch.Tensor, generator: torch.Generator,
                     rounds: int = 3) -> torch.Tensor:
    """One uniformly drawn item per user, redrawn (a few rounds) where it was a training purchase."""
    negatives = torch.randint(n_items, users.shape, generator=generator, device=users.device)
    for _ in range(rounds):
        keys = users * n_items + negatives
        found = positive_keys[torch.searchsorted(positive_keys, keys).clamp(max=len(positive_keys) - 1)] == keys
        if not bool(found.any()):
            break
        negatives[found] = torch.randint(n_items, (int(found.sum()),), generator=generator, device=users.device)
    return negatives


def decorrelation_weight(conf: RecommendTrainConf, name: str) -> float:
    """α of AFDGCF's loss for model ``name``: 0 for a model without it, else the configured or the model's own."""
    if name not in DECORRELATED:
        return 0.0
    return DEFAULT_DECORRELATION[name] if conf.decorrelation_weight is None else conf.decorrelation_weight


def batch_loss(model: Recommender, users, positives, negatives, reg: float, decorrelation_weight: float):
    """BPR with one negative + L2 on the batch's ego embeddings (+ α × AFDGCF's de-correlation loss).

    With ``decorrelation_weight`` α > 0 the whole graph is propagated once: ``afd_loss`` correlates
    every user's and every item's embedding of each de-correlated layer (``decorrelated_layers``),
    and the batch's final embeddings are read from the same propagation.
    """
    user_nodes, item_nodes, negative_nodes = users, model.n_users + positives, model.n_users + negatives
    batch = len(users)
    # each distinct node propagated once, however often the batch names it
    distinct, position = torch.unique(torch.cat([user_nodes, item_nodes, negative_nodes]), return_inverse=True)
    if decorrelation_weight > 0:
        final, layers = model.decorrelated_layers()
        nodes = final[distinct]
    else:
        nodes = model.propagate_rows(distinct)
    u, i, j = (nodes[position[k * batch : (k + 1) * batch]] for k in range(3))
    bpr = F.softplus((u * j).sum(1) - (u * i).sum(1)).mean()
    ego = model.embedding.weight
    l2 = 0.5 * (ego[user_nodes].pow(2).sum() + ego[item_nodes].pow(2).sum() + ego[negative_nodes].pow(2).sum())
    loss = bpr + reg * l2 / batch
    if decorrelation_weight > 0:
        loss = loss + decorrelation_weight * afd_loss(afd_blocks(model, layers))
    return loss


def final_embeddings(model: Recommender) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return tuple(block.detach().float() for block in model.split(model.propagate()))


def train(data: RecData, conf: RecommendTrainConf, seed: int, model_name: str | None = None,
          cache: EigenCache | None = None) -> TrainResult:
    """Train ``model_name`` (default ``conf.model``) on ``data.train``; score ``data.test`` once."""
    started = time.perf_counter()
    name = model_name or conf.model
    device = resolve_device(conf.device)
    torch.manual_seed(seed)
    fit, validation = data.split_validation(conf.val_fraction, conf.validation_seed)
    model = build_model(name, fit, conf.dim, conf.eigen_k, conf.lightgcn_layers, conf.persona_edge_weight, cache)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=conf.lr)
    generator = torch.Generator(device=device).manual_seed(seed)
    pairs = torch.as_tensor(fit.train, device=device)
    positive_keys = torch.sort(pairs[:, 0] * data.n_items + pairs[:, 1]).values
    decorrelation = decorrelation_weight(conf, name)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=conf.amp)

    best_score, best_epoch, best_state, stale, losses, epoch = -1.0, 0, None, 0, [], 0
    for epoch in range(1, conf.max_epochs + 1):
        model.train()
        order = torch.randperm(len(pairs), generator=generator, device=device)
        batches = torch.split(order, conf.batch_size)
        total = 0.0
        for batch in tqdm(batches, desc=f"{name} epoch {epoch}", leave=False, disable=not conf.progress):
            users, positives = pairs[batch, 0], pairs[batch, 1]
            negatives = sample_negatives(users, data.n_items, positive_keys, generator)
            with autocast:
                loss = batch_loss(model, users, positives, negatives, conf.reg, decorrelation)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        losses.append(total / len(batches))
        if epoch % conf.eval_every and epoch != conf.max_epochs:
            continue
        model.eval()
        user_emb, item_emb, _ = final_embeddings(model)
        score = evaluate(user_emb, item_emb, validation, fit.train, ks=(10,)).get(SELECTION_METRIC, 0.0)
        log.info("%s seed %d epoch %d: loss %.4f, validation %s %.4f", name, seed, epoch, losses[-1], SELECTION_METRIC, score)
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.named_parameters()}
        else:
            stale += 1
            if stale >= conf.patience:
                break

    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()
    user_emb, item_emb, persona_emb = final_embeddings(model)
    metrics = evaluate(user_emb, item_emb, data.test, data.train, ks=tuple(conf.cutoffs)) if len(data.test) else {}
    return TrainResult(
        model=name, seed=seed, metrics=metrics, val_ndcg=best_score, best_epoch=best_epoch, epochs=epoch,
        seconds=time.perf_counter() - started, device=str(device), losses=losses,
        user_embeddings=user_emb.cpu().numpy(), item_embeddings=item_emb.cpu().numpy(),
        persona_embeddings=persona_emb.cpu().numpy() if persona_emb.shape[0] else None, network=model,
    )
