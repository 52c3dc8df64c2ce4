"""Will a run fit one device? XLA's compiled memory of its train step for each micro-batch size.

    python -m lra.memory_plan task=listops protocol=lra_official attention=softmax
    python -m lra.memory_plan task=text protocol=lra_official attention=linear --limits 40,80 --remat

Compiles (never runs) the run's train step on the local backend for micro-batches from the whole
``train.batch_size`` down, with ``train.grad_accum_steps`` = batch / micro-batch, and prints XLA's
compiled memory of each (arguments + outputs + temporaries - aliased, as ``train.micro_batch=auto``
measures it), then the largest micro-batch that fits each ``--limits`` size in GiB less
``train.memory_margin``. It stops once the smallest limit is met. No data is read: the token
embedding is built for the task's vocabulary (``lra.data.tasks.task_vocab_size``; ``--vocab-size``
overrides it). Figures compiled for a CPU are XLA's
CPU buffer assignment, an estimate for a GPU (whose fusions differ); on the GPU itself they are
what ``auto`` will see. Arguments after the flags are Hydra overrides of the run config.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
from flax import nnx
from hydra import compose, initialize_config_dir

from lra.build import build_run
from lra.data.tasks import batch_length, task_vocab_size
from lra.metrics import compiled_memory
from lra.registry import ATTENTION_CONFIGS
from lra.training.accumulation import GIB, micro_batch_sizes
from lra.training.steps import compile_step, make_train_step


def plan(overrides: list[str], limits_gb: list[float], vocab_size: int | None = None) -> dict:
    """{"config": ..., "rows": [(micro_batch, accum_steps, bytes)], "fits": {limit: micro_batch | None}}."""
    with initialize_config_dir(config_dir=str(ATTENTION_CONFIGS.parent), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    model, optimizer, _ = build_run(cfg, vocab_size or task_vocab_size(cfg.task))
    model_graph, model_state = nnx.split(model)
    optimizer_graph, optimizer_state = nnx.split(optimizer)
    batch_size, length = int(cfg.train.batch_size), batch_length(cfg.task)
    batch = {"tokens": jax.ShapeDtypeStruct((batch_size, length), jnp.int32),
             "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
             "weights": jax.ShapeDtypeStruct((batch_size,), jnp.float32)}
    margin = float(cfg.train.memory_margin)
    budgets = {limit: limit * GIB * (1 - margin) for limit in limits_gb}
    rows, fits = [], {limit: None for limit in limits_gb}
    for micro in micro_batch_sizes(batch_size):
        steps = batch_size // micro
        compiled = compile_step(make_train_step(model_graph, optimizer_graph, steps), model_state, optimizer_state,
                                batch, donate_argnums=(0, 1))
        needed = compiled_memory(compiled)["xla_step_bytes"]
        rows.append((micro, steps, needed))
        for limit, budget in budgets.items():
            if fits[limit] is None and needed is not None and needed <= budget:
                fits[limit] = micro
        if needed is None or all(value is not None for value in fits.values()):
            break
    label = (f"{cfg.protocol.name} {cfg.task.name}/{cfg.attention.name}: batch {batch_size} x {length} tokens, "
             f"{cfg.model.num_layers} layers x {cfg.model.emb_dim}, {cfg.model.dtype}"
             f"{', remat ' + str(cfg.model.remat) if cfg.model.get('remat', 'none') != 'none' else ''}; backend {jax.default_backend()}, margin {margin:g}")
    return {"config": label, "rows": rows, "fits": fits, "params": sum(x.size for x in jax.tree.leaves(
        nnx.state(model, nnx.Param)))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limits", default="40,80", help="device memory sizes in GiB, comma-separated")
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the task's vocabulary")
    parser.add_argument("--remat", action="store_true", help="the same with model.remat=block")
    args, overrides = parser.parse_known_args(argv)
    overrides = [*overrides, "logger=csv", *(["model.remat=block"] if args.remat else [])]
    result = plan(overrides, [float(x) for x in args.limits.split(",")], args.vocab_size)
    print(result["config"])
    for micro, steps, needed in result["rows"]:
        shown = "no memory analysis on this backend" if needed is None else f"{needed / GIB:.2f} GiB"
        print(f"  micro-batch {micro:4d} (train.grad_accum_steps={steps:3d}): {shown}")
    for limit, micro in result["fits"].items():
        advice = ("does not fit even one row: try --remat, model.dtype=bfloat16 or more devices" if micro is None
                  else f"train.micro_batch={micro}" + (" (no accumulation)" if micro == result["rows"][0][0] else ""))
        print(f"  {limit:g} GiB: {advice}")


if __name__ == "__main__":
    sys.exit(main())
