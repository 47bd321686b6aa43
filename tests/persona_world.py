"""A tiny shop with planted persona combinations, shared by the segment, explore and report tests.

40 customers in four planted groups — {Gardener}, {Home Baker}, {Book Lover}, {Gardener, Home Baker} —
who buy from their personas' five items each, plus a bestseller everybody buys. Every table is
built in plain Python first (``World.rows``) so tests can compute expected values independently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from persona_spark.personas import PersonaSet

PERSONAS = PersonaSet(
    ("Gardener", "Home Baker", "Book Lover"),
    ("Buys garden tools and plants.", "Buys baking tins and ingredients.", "Buys books and bookmarks."),
    "tiny_shop",
)
COMBOS = [(0,), (1,), (2,), (0, 1)]
N_USERS = 40
ITEMS_PER_PERSONA = 5
BESTSELLER = 15
ITEM_NAMES = (
    ["GARDEN TROWEL", "SEED TRAY", "WATERING CAN", "PLANT LABELS", "HERB POTS"]
    + ["CAKE TIN", "PIPING BAGS", "ROLLING PIN", "COOKIE CUTTERS", "BAKING PAPER"]
    + ["CLASSIC NOVEL", "POETRY BOOK", "BOOKMARK SET", "READING LIGHT", "BOOK STAND"]
    + ["PAPER BAG"]
)
LLM_USERS = 12  # users 0..11 carry LLM labels (the prototypes), the rest propagated ones
START = datetime(2024, 1, 1)


def combo_of(user: int) -> tuple[int, ...]:
    return COMBOS[user % len(COMBOS)]


@dataclass
class World:
    transactions: list[tuple] = field(default_factory=list)  # canonical transaction rows
    personas: list[tuple] = field(default_factory=list)  # user_idx, persona_idx, score, rank, source
    edges: list[tuple] = field(default_factory=list)  # user_idx, item_idx, n_purchases, quantity, first, last, split

    def frames(self, spark) -> dict:
        transactions = spark.createDataFrame(
            self.transactions,
            "customer_id string, order_id string, item_id string, item_name string, quantity long, "
            "unit_price double, ts timestamp",
        )
        users = spark.createDataFrame(
            [(u, f"C{u:03d}", sum(1 for e in self.edges if e[0] == u)) for u in range(N_USERS)],
            "user_idx int, customer_id string, degree int",
        )
        items = spark.createDataFrame(
            [(i, f"I{i:02d}", name, sum(1 for e in self.edges if e[1] == i)) for i, name in enumerate(ITEM_NAMES)],
            "item_idx int, item_id string, item_name string, degree int",
        )
        edges = spark.createDataFrame(
            self.edges,
            "user_idx int, item_idx int, n_purchases int, quantity long, first_ts timestamp, last_ts timestamp, "
            "split string",
        )
        personas = spark.createDataFrame(
            self.personas, "user_idx int, persona_idx int, score double, rank int, source string"
        )
        return {
            "transactions": transactions,
            "users": users,
            "items": items,
            "edges": edges,
            "personas": personas,
            "persona_set": PERSONAS.to_dataframe(spark),
        }


def write_persona_set(path: Path) -> Path:
    """The tiny shop's persona set as a YAML file, for configs (``Config.personas``)."""
    entries = [{"name": n, "description": d} for n, d in zip(PERSONAS.names, PERSONAS.descriptions)]
    path.write_text(yaml.safe_dump({"title": PERSONAS.title, "personas": entries}))
    return path


def write_world(store, frames: dict, names=("transactions", "users", "items", "edges", "personas", "persona_set")) -> None:
    """Write the world's canonical tables through the table layer, as the pipeline stages would."""
    for name in names:
        store.write_table(frames[name], name)


def build_world(seed: int = 0) -> World:
    rng = random.Random(seed)
    world = World()
    lines: dict[tuple[int, int], list] = {}
    for user in range(N_USERS):
        combo = combo_of(user)
        source = "llm" if user < LLM_USERS else "propagated"
        for rank, persona in enumerate(combo, start=1):
            world.personas.append((user, persona, 1.0 / rank, rank, source))
        favourites = [p * ITEMS_PER_PERSONA + i for p in combo for i in rng.sample(range(ITEMS_PER_PERSONA), 3)]
        for order in range(2 + user % 3):
            ts = START + timedelta(days=7 * order + user % 5, hours=user % 7)
            basket = rng.sample(favourites, 2) + [BESTSELLER]
            for item in basket:
                quantity = 1 + (user * 7 + item) % 4
                world.transactions.append(
                    (f"C{user:03d}", f"O{user:03d}-{order}", f"I{item:02d}", ITEM_NAMES[item], quantity,
                     1.5 + item % 3, ts)
                )
                lines.setdefault((user, item), []).append((quantity, ts))
    for (user, item), bought in sorted(lines.items()):
        split = "test" if item == BESTSELLER and user % 2 == 0 else "train"
        world.edges.append(
            (user, item, len(bought), sum(q for q, _ in bought), min(t for _, t in bought), max(t for _, t in bought), split)
        )
    return world


@pytest.fixture(scope="module")
def world() -> World:
    """The shop, as a fixture for the modules that import it."""
    return build_world()


@pytest.fixture(scope="module")
def frames(spark, world):
    return world.frames(spark)
