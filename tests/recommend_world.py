"""A tiny interaction world with planted persona structure, shared by the recommender tests."""

from __future__ import annotations

import numpy as np

from persona_spark.recommend.data import RecData

# Trainer settings small enough for a test, large enough to learn the planted world.
FAST = dict(dim=16, eigen_k=24, lr=0.05, batch_size=128, max_epochs=8, patience=8, progress=False, device="cpu")
USERS_PER_PERSONA, ITEMS_PER_PERSONA = 30, 20


def planted_world(n_personas: int = 4, users_per_persona: int = USERS_PER_PERSONA,
                  items_per_persona: int = ITEMS_PER_PERSONA,
                  purchases: int = 8, seed: int = 0) -> RecData:
    """Each user has one persona and buys ``purchases`` items of that persona's block only.

    Items carry their block's persona; a quarter of each user's items go to test.
    """
    rng = np.random.default_rng(seed)
    n_users, n_items = n_personas * users_per_persona, n_personas * items_per_persona
    user_persona = np.repeat(np.arange(n_personas), users_per_persona)
    train, test = [], []
    for user, persona in enumerate(user_persona):
        block = persona * items_per_persona + rng.choice(items_per_persona, purchases, replace=False)
        cut = purchases * 3 // 4
        train += [(user, item) for item in block[:cut]]
        test += [(user, item) for item in block[cut:]]
    item_persona = np.repeat(np.arange(n_personas), items_per_persona)
    return RecData(
        n_users=n_users, n_items=n_items, n_personas=n_personas,
        train=np.array(train), test=np.array(test),
        user_personas=np.stack([np.arange(n_users), user_persona], 1),
        item_personas=np.stack([np.arange(n_items), item_persona], 1),
        persona_names=tuple(f"Persona {p}" for p in range(n_personas)),
    )


def purchase_world() -> RecData:
    """Three customers, four items; item 0 tagged {0}, item 1 {0, 1}, item 2 {1}, item 3 untagged.

    A: 10 purchases, 4 of item 0 and 2 of item 1 -> share of persona 0 = (4 + 2/2) / 10 = 0.5
    B: 2 purchases, both of item 0             -> share of persona 0 = 1.0
    C: 20 purchases, all of item 3             -> 0
    """
    a, b, c = 0, 1, 2
    train = [(a, 0)] * 4 + [(a, 1)] * 2 + [(a, 2)] * 1 + [(a, 3)] * 3 + [(b, 0)] * 2 + [(c, 3)] * 20
    return RecData(n_users=3, n_items=4, n_personas=2, train=np.array(train), test=np.empty((0, 2), np.int64),
                   user_personas=np.empty((0, 2), np.int64), item_personas=np.array([(0, 0), (1, 0), (1, 1), (2, 1)]))
