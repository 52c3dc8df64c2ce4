"""The compiled train and eval steps: pure functions of (model state, optimizer state, batch).

The Flax NNX model and optimizer are split once into static graph definitions and array states
(the functional pattern of the NNX performance guide), so each call of the compiled step only
flattens arrays, without traversing the Python object graph. Batches are dicts of
``tokens`` (batch, n) int32, ``labels`` (batch,) int32 and ``weights`` (batch,) float32; weight 0
marks the padding rows of the last evaluation batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx


def weighted_loss_and_correct(logits, labels, weights):
    """Cross-entropy summed with weights, and the weighted count of correct argmax predictions."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return (losses * weights).sum(), (correct * weights).sum()


def make_train_step(model_graph: nnx.GraphDef, optimizer_graph: nnx.GraphDef):
    def train_step(model_state, optimizer_state, batch):
        model = nnx.merge(model_graph, model_state)
        optimizer = nnx.merge(optimizer_graph, optimizer_state)
        count = jnp.maximum(batch["weights"].sum(), 1.0)

        def loss_fn(model):
            logits = model(batch["tokens"], deterministic=False)
            loss_sum, correct = weighted_loss_and_correct(logits, batch["labels"], batch["weights"])
            return loss_sum / count, correct

        (loss, correct), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
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
    data axis, states replicated, gradients all-reduced by XLA.
    """
    shardings = {"in_shardings": in_shardings, "out_shardings": out_shardings}
    jitted = jax.jit(step_fn, donate_argnums=donate_argnums,
                     **{key: value for key, value in shardings.items() if value is not None})
    return jitted.lower(*example_args).compile()
