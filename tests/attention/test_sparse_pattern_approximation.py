"""The sparse-pattern families in the approximation benchmark (configs/bench/approximation.yaml): exact
softmax once the budget covers every pair, an error below it."""

from __future__ import annotations

import pytest

from lra.bench import approximation

PLAN = approximation.load_plan()


@pytest.mark.parametrize("name, exact, smaller", [("local", 64, 16), ("sparse_transformer", 64, 16),
                                                  ("longformer", 128, 16), ("bigbird", 32, 8)])
def test_exact_at_full_budget_and_not_below(name, exact, smaller):
    inputs = approximation.random_inputs(1, 64, 2, 8, seed=1)
    row = approximation.measure(name, PLAN["families"][name], PLAN, inputs, budget=exact, draws=1)
    assert row["status"] == "ok" and row["budget"] == exact, row
    assert row["rel_error_max"] < 1e-5, row
    below = approximation.measure(name, PLAN["families"][name], PLAN, inputs, budget=smaller, draws=1)
    assert below["rel_error_mean"] > 1e-3, below
