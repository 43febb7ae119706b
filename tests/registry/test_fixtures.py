"""The shared fixtures hold what they promise (other areas build on them)."""

from __future__ import annotations

import numpy as np

from mamlctl.registry import queries as q
from mamlctl.registry.db import open_registry
from tests.conftest import SeededRegistry, sine_values


def test_seeded_registry_round_trips(seeded_registry: SeededRegistry) -> None:
    with open_registry(seeded_registry.settings) as factory, factory.begin() as sess:
        assert q.get_family(sess, "sines") == seeded_registry.family
        series = q.load_family_series(sess, "sines")
    assert [s.series_id for s in series] == list(seeded_registry.values)
    for s in series:
        np.testing.assert_array_equal(s.values, seeded_registry.values[s.series_id])
    np.testing.assert_array_equal(seeded_registry.values["s0"], sine_values(240, level=5.0, seed=0))
