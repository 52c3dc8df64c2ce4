"""The compiled train and eval steps: pure functions of (model state, optimizer state, batch).

The Flax NNX model and optimizer are split once into static graph definitions and array states
(the functional pattern of the NNX performance guide), so each call of the compiled step only
flattens arrays, without traversing the Python object graph. Batches are dicts of
``tokens`` (batch, n) int32, ``labels`` (batch,) int32 and ``weights`` (batch,) float32; weight 0
marks the padding rows of the last evaluation batch.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from lra.cpu_rng import use_unrolled_threefry
from lra.training import sharding

use_unrolled_threefry()  # same random bits, one fused pass on the CPU (lra/cpu_rng.py)


def weighted_loss_and_correct(logits, labels, weights):
    """Cross-entropy summed with weights, and the weighted count of correct argmax predictions."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return (losses * weights).sum(), (correct * weights).sum()


def micro_batches(batch: dict, accum_steps: int) -> dict:
    """(batch, ...) arrays -> (accum_steps, batch / accum_steps, ...): micro-batch j holds rows
    j, j + k, j + 2k, ... (k = accum_steps), so with the batch split over devices in contiguous
    blocks every micro-batch keeps rows on every device (no data moves between devices)."""
    def split(x):
        return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def make_train_step(model_graph: nnx.GraphDef, optimizer_graph: nnx.GraphDef, accum_steps: int = 1):
    """The compiled training step. ``accum_steps`` > 1 splits the batch into that many micro-batches
    (``micro_batches``) and sums their gradients inside the step (``jax.lax.scan``: only one
    micro-batch's activations are alive at a time) before one optimizer update. Each micro-batch's
    loss is divided by the whole batch's weight, so the summed gradient is the full-batch gradient:
    the update is the same up to float summation order. Dropout draws fresh masks per micro-batch
    (the RNG state advances once per micro-batch), equal in distribution to the full batch's."""
    if accum_steps < 1:
        raise ValueError(f"accum_steps must be >= 1; got {accum_steps}")

    def train_step(model_state, optimizer_state, batch):
        model = nnx.merge(model_graph, model_state)
        optimizer = nnx.merge(optimizer_graph, optimizer_state)
        count = jnp.maximum(batch["weights"].sum(), 1.0)
        graph, params, rest = nnx.split(model, nnx.Param, ...)

        def loss_fn(params, rest, micro):
            micro_model = nnx.merge(graph, params, rest, copy=True)  # fresh variables in this trace
            logits = micro_model(micro["tokens"], deterministic=False)
            loss_sum, correct = weighted_loss_and_correct(logits, micro["labels"], micro["weights"])
            return loss_sum / count, (correct, nnx.split(micro_model, nnx.Param, ...)[2])

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if accum_steps == 1:
            (loss, (correct, rest)), grads = grad_fn(params, rest, batch)
        else:
            def accumulate(carry, micro):
                grads_sum, loss_sum, correct_sum, rest = carry
                (loss, (correct, rest)), grads = grad_fn(params, rest, micro)
                return (jax.tree.map(jnp.add, grads_sum, grads), loss_sum + loss, correct_sum + correct, rest), None

            zeros = jax.tree.map(jnp.zeros_like, params)
            start = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), rest)
            (grads, loss, correct, rest), _ = jax.lax.scan(accumulate, start, micro_batches(batch, accum_steps))
        nnx.update(model, rest)
        optimizer.update(model, grads)
        metrics = {"loss": loss, "accuracy": correct / count, "grad_norm": optax.tree.norm(grads)}
        return nnx.state(model), nnx.state(optimizer), metrics

    return train_step


def make_eval_step(model_graph: nnx.GraphDef):
    """(model state, batch) -> (sums, the model's RNG state after the batch).

    Evaluation is deterministic by default and leaves the RNG state as it was; a family whose
    evaluation draws on purpose (``eval_landmarks: resample``, ``eval_features: resample``) advances
    its stream, and ``lra.training.loop.evaluate`` feeds the returned state to the next batch, so
    every batch gets a fresh draw as in the authors' code."""
    def eval_step(model_state, batch):
        model = nnx.merge(model_graph, model_state)
        logits = model(batch["tokens"], deterministic=True)
        loss_sum, correct = weighted_loss_and_correct(logits, batch["labels"], batch["weights"])
        sums = {"loss_sum": loss_sum, "correct": correct, "count": batch["weights"].sum()}
        return sums, nnx.state(model, nnx.RngState)

    return eval_step


def compile_step(step_fn, *example_args, donate_argnums=(), in_shardings=None, out_shardings=None):
    """Ahead-of-time compile; the result refuses other shapes instead of silently recompiling.

    With shardings (lra.training.sharding) the step runs data-parallel: batches split over the
    data axis, states replicated, gradients all-reduced by XLA. Donated arguments that XLA cannot
    reuse (every buffer on a CPU) are expected: JAX's warning about them is silenced here, for this
    compilation only.
    """
    shardings = {"in_shardings": in_shardings, "out_shardings": out_shardings}
    jitted = jax.jit(step_fn, donate_argnums=donate_argnums,
                     **{key: value for key, value in shardings.items() if value is not None})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        return jitted.lower(*example_args).compile()


def compile_train_step(model_graph: nnx.GraphDef, optimizer_graph: nnx.GraphDef, model_state, optimizer_state,
                       batch: dict, mesh, accum_steps: int = 1):
    """The training loop's compiled step: data-parallel over ``mesh`` (states replicated, the batch's rows
    split, gradients all-reduced by XLA), states donated."""
    states, rows = sharding.replicated(mesh), sharding.batch_sharding(mesh)
    return compile_step(make_train_step(model_graph, optimizer_graph, accum_steps), model_state, optimizer_state,
                        batch, donate_argnums=(0, 1), in_shardings=(states, states, rows), out_shardings=states)
