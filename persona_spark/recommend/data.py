"""The one in-memory form the trainer uses, and its two sources.

``RecData`` holds index pairs as numpy arrays. It is read either from the directory that the
Spark exporter writes (Parquet + ``meta.json``) or, for benchmarks without Spark, from the paper's
OnlineRetail JSON files. numpy and pyarrow only: no Spark, no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from persona_spark.tables import storage

FORMAT = "persona-spark-recommend/1"
META_FILE = "meta.json"
PAIR_PARTS = {
    "train": ("user_idx", "item_idx"),
    "test": ("user_idx", "item_idx"),
    "user_personas": ("user_idx", "persona_idx"),
    "item_personas": ("item_idx", "persona_idx"),
}
# persona edge list -> the attribute holding its per-row weights
WEIGHTED_PARTS = {"user_personas": "user_persona_weight", "item_personas": "item_persona_weight"}


def _pairs(values=None) -> np.ndarray:
    return np.asarray(values if values is not None else np.empty((0, 2)), dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class RecData:
    """Users, items and personas as dense indices; every edge list is an (n, 2) int64 array.

    ``train``/``test`` are (user_idx, item_idx); ``user_personas`` is (user_idx, persona_idx) and
    ``item_personas`` is (item_idx, persona_idx), each with a float32 weight per row.
    """

    n_users: int
    n_items: int
    n_personas: int
    train: np.ndarray
    test: np.ndarray = field(default_factory=_pairs)
    user_personas: np.ndarray = field(default_factory=_pairs)
    item_personas: np.ndarray = field(default_factory=_pairs)
    user_persona_weight: np.ndarray | None = None
    item_persona_weight: np.ndarray | None = None
    persona_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in PAIR_PARTS:
            object.__setattr__(self, name, _pairs(getattr(self, name)))
        for name, weight_attr in WEIGHTED_PARTS.items():
            weight = getattr(self, weight_attr)
            pairs = getattr(self, name)
            weight = np.ones(len(pairs), np.float32) if weight is None else np.asarray(weight, np.float32)
            if weight.shape != (len(pairs),):
                raise ValueError(f"{name}: {len(pairs)} rows but {weight.shape} weights")
            if len(weight) and not (np.isfinite(weight).all() and (weight > 0).all()):
                row = int(np.flatnonzero(~(np.isfinite(weight) & (weight > 0)))[0])
                raise ValueError(f"{name}: weight must be a positive number, row {row} has {weight[row]}")
            object.__setattr__(self, weight_attr, weight)
        if self.persona_names and len(self.persona_names) != self.n_personas:
            raise ValueError(f"{len(self.persona_names)} persona names for n_personas={self.n_personas}")
        sizes = {"user_idx": self.n_users, "item_idx": self.n_items, "persona_idx": self.n_personas}
        for name, columns in PAIR_PARTS.items():
            pairs = getattr(self, name)
            for col, column in enumerate(columns):
                bad = (pairs[:, col] < 0) | (pairs[:, col] >= sizes[column])
                if bad.any():
                    row = int(np.flatnonzero(bad)[0])
                    raise ValueError(
                        f"{name}.{column}: row {row} has {pairs[row, col]}, outside 0..{sizes[column] - 1}"
                    )

    # ---- derived views -----------------------------------------------------------------
    def split_validation(self, fraction: float, seed: int) -> tuple[RecData, np.ndarray]:
        """Move ~``fraction`` of the training edges to a validation set; every user keeps one.

        Early stopping looks at these edges instead of the test split, so test is reported once.
        """
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        draw = rng.random(len(self.train))
        # The edge with the smallest draw of each user stays in training.
        order = np.lexsort((draw, self.train[:, 0]))
        first_of_user = np.ones(len(order), bool)
        first_of_user[1:] = self.train[order[1:], 0] != self.train[order[:-1], 0]
        to_val = np.zeros(len(order), bool)
        to_val[order] = (draw[order] < fraction) & ~first_of_user
        return replace(self, train=self.train[~to_val]), self.train[to_val]

    def holdout_users(self, fraction: float, seed: int) -> tuple[RecData, np.ndarray]:
        """Remove a random ``fraction`` of users with purchases: all their edges and persona labels.

        Returns the reduced data (held-out users stay as indices without edges) and their indices.
        """
        return self._holdout(0, "user_personas", "user_persona_weight", fraction, seed)

    def holdout_items(self, fraction: float, seed: int) -> tuple[RecData, np.ndarray]:
        """Remove a random ``fraction`` of purchased items: all their edges and persona tags."""
        return self._holdout(1, "item_personas", "item_persona_weight", fraction, seed)

    def _holdout(self, column: int, labels: str, weights: str, fraction: float, seed: int):
        held = _draw(np.concatenate([self.train[:, column], self.test[:, column]]), fraction, seed)
        keep = ~np.isin(getattr(self, labels)[:, 0], held)
        return replace(self, train=_without(self.train, column, held), test=_without(self.test, column, held),
                       **{labels: getattr(self, labels)[keep], weights: getattr(self, weights)[keep]}), held

    def with_user_personas(self, pairs: np.ndarray, weight: np.ndarray | None = None) -> RecData:
        """The same interactions with another user–persona labelling (e.g. GPLR instead of GPT-4)."""
        return replace(self, user_personas=_pairs(pairs), user_persona_weight=weight)


def _draw(indices: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded random ``fraction`` (at least one) of the distinct ``indices``, sorted."""
    distinct = np.unique(indices)
    count = max(1, round(fraction * len(distinct)))
    return np.sort(np.random.default_rng(seed).choice(distinct, count, replace=False))


def _without(pairs: np.ndarray, column: int, held: np.ndarray) -> np.ndarray:
    return pairs[~np.isin(pairs[:, column], held)]


def csr(pairs: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, sorted column indices) of a pair list; rows are ``pairs[:, 0]``."""
    pairs = _pairs(pairs)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))
    indptr = np.zeros(n_rows + 1, np.int64)
    np.cumsum(np.bincount(pairs[:, 0], minlength=n_rows), out=indptr[1:])
    return indptr, pairs[order, 1]


# ---- the exporter's directory ---------------------------------------------------------------
def write_directory(data: RecData, path: str | Path) -> Path:
    """Write ``data`` in the exporter's layout (used where no Spark runs: tests, benchmarks)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name, columns in PAIR_PARTS.items():
        pairs = getattr(data, name)
        table = {columns[0]: pa.array(pairs[:, 0], pa.int32()), columns[1]: pa.array(pairs[:, 1], pa.int32())}
        if name in WEIGHTED_PARTS:
            table["weight"] = pa.array(getattr(data, WEIGHTED_PARTS[name]), pa.float32())
        (path / name).mkdir(exist_ok=True)
        pq.write_table(pa.table(table), path / name / "part-0.parquet")
    write_meta(path, data.n_users, data.n_items, data.n_personas, data.persona_names)
    return path


def write_meta(path: str, n_users: int, n_items: int, n_personas: int, persona_names=()) -> None:
    meta = {"format": FORMAT, "n_users": n_users, "n_items": n_items, "n_personas": n_personas,
            "persona_names": list(persona_names)}
    storage.write_text(storage.join(str(path), META_FILE), json.dumps(meta, indent=2))


def read_directory(path: str) -> RecData:
    """Read what ``export-tripartite`` (or ``write_directory``) wrote, at any location ``storage`` reaches."""
    path = str(path)
    meta_path = storage.join(path, META_FILE)
    if not storage.exists(meta_path):
        raise FileNotFoundError(f"{meta_path} not found: run the 'export-tripartite' stage first "
                                "(recommend.export.dir)")
    meta = json.loads(storage.read_text(meta_path))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    parts = {}
    for name, columns in PAIR_PARTS.items():
        filesystem, part_path = storage.filesystem(storage.join(path, name))
        table = pq.read_table(part_path, filesystem=filesystem)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ValueError(f"{storage.join(path, name)}: missing columns {missing} (has {table.column_names})")
        parts[name] = np.stack([table[c].to_numpy().astype(np.int64) for c in columns], axis=1)
        if name in WEIGHTED_PARTS:
            weight = table["weight"].to_numpy() if "weight" in table.column_names else None
            parts[WEIGHTED_PARTS[name]] = weight
    return RecData(
        n_users=int(meta["n_users"]), n_items=int(meta["n_items"]), n_personas=int(meta["n_personas"]),
        persona_names=tuple(meta.get("persona_names") or ()), **parts,
    )


# ---- the paper's OnlineRetail files --------------------------------------------------------
def _json_pairs(path: Path) -> np.ndarray:
    mapping = json.loads(path.read_text())
    return _pairs([(int(key), int(value)) for key, values in mapping.items() for value in values])


def read_user_personas(path: str | Path) -> np.ndarray:
    """(user_idx, persona_idx) pairs of another labelling (e.g. a GPLR run's ``personas``), from
    ``{"user_idx": [persona_idx, ...]}`` JSON or a Parquet file/directory with those two columns."""
    path = Path(path)
    if path.suffix == ".json":
        return _json_pairs(path)
    table = pq.read_table(path, columns=["user_idx", "persona_idx"])
    return np.stack([table[c].to_numpy().astype(np.int64) for c in ("user_idx", "persona_idx")], axis=1)


def load_gplr_json(data_dir: str | Path, user_personas: str | Path | None = "user_personas_gpt4.json") -> RecData:
    """The paper's split (``train.json``, ``test.json``, GPT-4 labels, ``personas.json``).

    ``user_personas`` names the user-label file (relative to ``data_dir`` or absolute), in the same
    ``{"user_idx": [persona_idx, ...]}`` form, e.g. a GPLR run's output; None leaves users unlabelled.
    """
    data_dir = Path(data_dir)
    train, test = _json_pairs(data_dir / "train.json"), _json_pairs(data_dir / "test.json")
    personas = json.loads((data_dir / "personas.json").read_text())
    names = tuple(p["name"] for p in sorted(personas, key=lambda p: p["index"]))
    user_labels = _pairs() if user_personas is None else _json_pairs(data_dir / user_personas)
    return RecData(
        n_users=int(max(train[:, 0].max(), test[:, 0].max()) + 1),
        n_items=int(max(train[:, 1].max(), test[:, 1].max()) + 1),
        n_personas=len(names),
        train=train,
        test=test,
        user_personas=user_labels,
        item_personas=_json_pairs(data_dir / "item_personas_gpt4.json"),
        persona_names=names,
    )
