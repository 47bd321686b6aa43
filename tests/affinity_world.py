"""Small random purchase graphs with prototype labels, drawn by hypothesis for the affinity tests."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def small_graphs(draw, max_users: int = 14, max_items: int = 8):
    n_users, n_items = draw(st.integers(2, max_users)), draw(st.integers(1, max_items))
    n_personas = draw(st.integers(1, 3))
    pairs = draw(st.sets(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)), min_size=1, max_size=40))
    pairs = np.array(sorted(pairs))
    cells = st.sampled_from([0.0, 0.0, 1.0]) | st.floats(0.01, 1.0)
    labels = np.array(draw(st.lists(st.lists(cells, min_size=n_personas, max_size=n_personas),
                                    min_size=n_users, max_size=n_users)))
    labels[0, 0] = max(labels[0, 0], 0.5)  # at least one prototype
    return pairs[:, 0], pairs[:, 1], labels, n_items
