"""The eval step carries the RNG state from batch to batch: a family that draws at evaluation on
purpose (the authors' ``resample`` flags) gets a fresh draw per batch; the default stays fixed."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from omegaconf import OmegaConf

from lra.build import attention_factory, build_model
from lra.data.token_cache import TokenSplit
from lra.training.loop import LoopConfig, evaluate
from lra.training.steps import make_eval_step

LENGTH, VOCAB = 24, 11


def _model(attention: str, **knobs):
    cfg = OmegaConf.create({
        "seed": 0, "quirks": {"mean_pool_includes_padding": False, "pixel_zero_is_padding": False},
        "task": {"num_classes": 2, "max_length": LENGTH, "pad_id": 0, "grid_shape": None},
        "model": {"emb_dim": 8, "num_heads": 2, "qkv_dim": 8, "mlp_dim": 8, "num_layers": 1,
                  "dropout_rate": 0.0, "attention_dropout_rate": 0.0}})
    return build_model(cfg, VOCAB, attention_factory(attention, **knobs))


def _split(copies=4):
    """The same example ``copies`` times: with batch size 1 any difference between batches is the draw."""
    sequence = np.random.default_rng(0).integers(1, VOCAB, LENGTH - 4).astype(np.int32)
    return TokenSplit("val", np.tile(sequence, copies), np.arange(copies + 1) * len(sequence),
                      np.zeros(copies, np.int32))


def _counts(state):
    return [int(leaf) for leaf in jax.tree.leaves(nnx.filter_state(state, nnx.RngCount))]


@pytest.mark.parametrize("attention,knob", [("skyformer", "eval_landmarks"), ("kl_gmm_rks", "eval_features")])
def test_resample_draws_per_batch_and_fixed_does_not(attention, knob):
    cfg = LoopConfig(steps=1, batch_size=1, eval_every=1, log_every=1, max_length=LENGTH, seed=0, prefetch=1)
    for mode, fresh_per_batch in (("resample", True), ("fixed", False)):
        graph, state = nnx.split(_model(attention, **{knob: mode, "num_samples" if knob == "eval_features"
                                                      else "num_landmarks": 4}))
        step = jax.jit(make_eval_step(graph))
        losses = []

        def recording(model_state, batch):
            sums, rng_state = step(model_state, batch)
            losses.append(float(sums["loss_sum"]))
            return sums, rng_state

        before = _counts(state)
        evaluate(recording, state, _split(), cfg)
        assert len(losses) == 4
        assert (len(set(losses)) == 4) if fresh_per_batch else (len(set(losses)) == 1), (mode, losses)
        assert _counts(state) == before  # the caller's RNG state is left as it was
