"""Approximation benchmark: how far each approximate attention is from what it approximates.

    python -m lra.bench.approximation                                  # random q/k/v, defaults
    python -m lra.bench.approximation --attention performer,mra2 --lengths 512,1024 --budget-length 1024
    python -m lra.bench.approximation --run-dir outputs/...            # q/k/v of a trained model

For each family of ``configs/bench/approximation.yaml`` (target and budget knob per family) it reports
the relative error

    ||out - exact||_F / ||exact||_F        over the real query positions of the batch

(a) versus length at the family's configured budget and (b) versus its budget (features, landmarks,
blocks per row, noise samples) at ``--budget-length``. ``exact`` is softmax attention for Performer,
Nystromformer and MRA; the exact Gaussian-kernel attention for Skyformer; for Reformer, shared-QK
softmax over every real key (no hashing, no chunks); the expected kernel of each
KL-Transformer variant with the module's own parameters (closed form for GMM-RKS/GMM-PRF, a large
independent Monte-Carlo draw for the generator variants and FastFood, whose expectations have no closed
form). Families with random draws are evaluated with ``--draws`` independent seeds (mean, std, min,
max over seeds); the others are deterministic and give the same error for every seed.

Inputs: q, k, v ~ N(0, ``--input-std``^2) of (batch, length, heads, head_dim), no padding; or, with
``--run-dir``, the q/k/v that one attention layer of a trained model sees on a validation batch
(padding included), via ``lra.restore.restore_model``. A family evaluated on captured inputs
whose config is the checkpoint's own attention uses the trained parameters of that layer.

Output: ``results/bench/<device>/<name>/`` with approximation.csv, approximation.md,
error_vs_length.png, error_vs_budget.png and provenance.json (``lra/bench/report.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import OmegaConf

from attention.base import AttentionSpec
from attention.learned_kernels import (FastFoodAttention, GMMPRFAttention, GMMRKSAttention, fastfood_features,
                                       gmm_prf_expected_attention, gmm_rks_expected_attention,
                                       normalised_linear_attention, scale_inputs)
from attention.reformer import shared_qk_attention
from attention.skyformer import kernelized_attention
from attention.softmax import softmax_attention
from lra.atomic_files import atomic_write_text
from lra.bench.report import PointProgress, markdown_table, output_directory, plot_lines, write_csv, write_provenance
from lra.registry import ATTENTION_CONFIGS
from lra.build import make_attention

PLAN = ATTENTION_CONFIGS.parent / "bench" / "approximation.yaml"
TARGETS = ("softmax", "gaussian_kernel", "expected_kernel", "monte_carlo_kernel", "shared_qk_softmax")
COLUMNS = ("attention", "sweep", "target", "inputs", "length", "budget_key", "budget", "draws", "rel_error_mean",
           "rel_error_std", "rel_error_min", "rel_error_max", "status", "reason")
PARAMS_SEED, TARGET_SEED = 0, 10_000  # parameters shared by every draw; the Monte-Carlo target's own draw


@dataclasses.dataclass(frozen=True)
class Inputs:
    """q, k, v (batch, n, heads, head_dim) and key_mask (batch, n); ``source`` labels the rows."""

    q: jax.Array
    k: jax.Array
    v: jax.Array
    key_mask: jax.Array
    source: str
    trained: tuple[str, nnx.Module] | None = None  # (config name, trained attention module) of a checkpoint

    def prefix(self, length: int) -> "Inputs":
        cut = lambda x: x[:, :length]
        return dataclasses.replace(self, q=cut(self.q), k=cut(self.k), v=cut(self.v), key_mask=cut(self.key_mask))


def load_plan(path: Path = PLAN) -> dict:
    plan = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    for name, entry in plan["families"].items():
        if entry.get("target") not in TARGETS:
            raise ValueError(f"{path}: families.{name}.target must be one of {TARGETS}, got {entry.get('target')!r}")
        if entry.get("budget") is None and entry.get("budgets"):
            raise ValueError(f"{path}: families.{name} lists budgets but has no budget key")
    return plan


def random_inputs(batch: int, length: int, heads: int, head_dim: int, std: float = 1.0, seed: int = 0) -> Inputs:
    q, k, v = (std * jax.random.normal(key, (batch, length, heads, head_dim))
               for key in jax.random.split(jax.random.key(seed), 3))
    return Inputs(q, k, v, jnp.ones((batch, length), bool), source=f"random N(0, {std:g}^2)")


# ------------------------------------------------------------------------------------------------
# q/k/v of a trained model
# ------------------------------------------------------------------------------------------------

class _Captured(Exception):
    """Stops the forward pass once the chosen layer's attention inputs are recorded."""


def capture_attention_inputs(model, tokens: jax.Array, layer: int = 0) -> tuple[jax.Array, ...]:
    """(q, k, v, key_mask) that attention layer ``layer`` of an ``lra.model.Encoder`` sees on ``tokens``
    (evaluation mode, CLS included). The model is left as it was."""
    if not 0 <= layer < len(model.blocks):
        raise ValueError(f"--layer {layer}: the model has {len(model.blocks)} layers")
    host = model.blocks[layer].self_attention
    original, captured = host.attention, {}

    def record(q, k, v, key_mask, *, deterministic):
        captured.update(q=q, k=k, v=v, key_mask=key_mask)
        raise _Captured

    host.attention = record
    try:
        model(tokens, deterministic=True)
    except _Captured:
        pass
    finally:
        host.attention = original
    return captured["q"], captured["k"], captured["v"], captured["key_mask"]


def checkpoint_inputs(run_dir: str, layer: int, batch_size: int) -> Inputs:
    """Restore a trained run (``lra.restore.restore_model``) and capture one layer's q/k/v on
    the first validation batch of its task."""
    try:
        from lra.restore import restore_model
    except ImportError as error:
        raise SystemExit(f"--run-dir needs lra.restore.restore_model(run_dir) -> (cfg, model), which this "
                         f"checkout does not provide ({error})") from error
    from lra.data.batches import eval_batches
    from lra.data.tasks import load_task

    cfg, model = restore_model(run_dir)
    cache = load_task(cfg.task, cfg.paths.data_dir, progress=True)
    batch = next(eval_batches(cache["val"], batch_size, cfg.task.max_length))
    q, k, v, mask = capture_attention_inputs(model, jnp.asarray(batch["tokens"]), layer)
    return Inputs(q, k, v, mask, source=f"checkpoint {run_dir} layer {layer}",
                  trained=(str(cfg.attention.name), model.blocks[layer].self_attention.attention))


# ------------------------------------------------------------------------------------------------
# Families and their targets
# ------------------------------------------------------------------------------------------------

def build_family(name: str, spec: AttentionSpec, overrides: dict, *, attention_seed: int, trained=None):
    """The family's module with config ``overrides``; parameters from PARAMS_SEED, or copied from the
    trained module (``trained``) where names and shapes match."""
    module = make_attention(name, spec, PARAMS_SEED, attention_seed=attention_seed, **overrides)
    if trained is not None:
        learned = (nnx.Param, nnx.BatchStat)
        source = dict(nnx.to_flat_state(nnx.state(trained, learned)))
        fits = lambda path, variable: path in source and source[path].shape == variable.shape
        nnx.update(module, nnx.from_flat_state([(path, source[path] if fits(path, variable) else variable)
                                                for path, variable in nnx.to_flat_state(nnx.state(module, learned))]))
    return module


def evaluator(module):
    """A compiled ``f(module, inputs)`` for every module of ``module``'s structure (e.g. other draws)."""
    graph, _ = nnx.split(module)
    apply = jax.jit(lambda state, q, k, v, m: nnx.merge(graph, state)(q, k, v, m, deterministic=True))
    return lambda module, inputs: apply(nnx.split(module)[1], inputs.q, inputs.k, inputs.v, inputs.key_mask)


def evaluate(module, inputs: Inputs) -> jax.Array:
    return evaluator(module)(module, inputs)


def fastfood_reference(module: FastFoodAttention, inputs: Inputs, draws: int) -> jax.Array:
    """FastFood's kernel averaged over ``draws`` permutations: their features side by side, / sqrt(draws)."""
    q_hat, k_hat = scale_inputs(inputs.q, inputs.k, inputs.key_mask)
    keys = jax.random.split(jax.random.key(TARGET_SEED), draws)
    permutations = [jax.random.permutation(key, module.head_dim) for key in keys]
    params = (module.S[...], module.G[...], module.B[...])
    features = lambda x: draws ** -0.5 * jnp.concatenate(
        [fastfood_features(x, *params, permutation, module.smoothing) for permutation in permutations], axis=-1)
    return normalised_linear_attention(features(q_hat), features(k_hat), inputs.v, inputs.key_mask, eps=module.eps)


def exact_output(name: str, entry: dict, plan: dict, module, spec: AttentionSpec, inputs: Inputs) -> jax.Array:
    """What ``module`` approximates, on ``inputs`` (see configs/bench/approximation.yaml)."""
    q, k, v, mask = inputs.q, inputs.k, inputs.v, inputs.key_mask
    target = entry["target"]
    if target == "softmax":
        return softmax_attention(q, k, v, mask)
    if target == "gaussian_kernel":
        return kernelized_attention(q, k, v, mask)
    if target == "shared_qk_softmax":
        return shared_qk_attention(q, v, mask, self_mask=module.self_mask)
    if target == "expected_kernel":
        if isinstance(module, GMMRKSAttention):
            return gmm_rks_expected_attention(q, k, v, mask, module.mean[...], module.matrix[...], module.smoothing,
                                              module.eps)
        if isinstance(module, GMMPRFAttention):
            return gmm_prf_expected_attention(q, k, v, mask, module.mean[...], module.log_var[...], module.eps)
        raise ValueError(f"{PLAN}: families.{name}: no closed-form expected kernel for {type(module).__name__}")
    if isinstance(module, FastFoodAttention):
        return fastfood_reference(module, inputs, plan["fastfood_reference_draws"])
    reference = build_family(name, spec, {**entry.get("overrides", {}), entry["budget"]: plan["reference_samples"]},
                             attention_seed=TARGET_SEED, trained=trained_for(name, inputs))
    return evaluate(reference, inputs)


def trained_for(name: str, inputs: Inputs):
    return inputs.trained[1] if inputs.trained is not None and inputs.trained[0] == name else None


def relative_error(out: jax.Array, exact: jax.Array, key_mask: jax.Array) -> float:
    """||out - exact|| / ||exact|| (Frobenius) over the real query positions, in float64."""
    real = np.asarray(key_mask, bool)
    out, exact = np.asarray(out, np.float64)[real], np.asarray(exact, np.float64)[real]
    return float(np.linalg.norm(out - exact) / np.linalg.norm(exact))


def effective_budget(module, key: str | None):
    if key is None:
        return None
    if hasattr(module, key):
        return getattr(module, key)
    return getattr(module, "options", {}).get(key)


def measure(name: str, entry: dict, plan: dict, inputs: Inputs, *, budget=None, draws: int = 3,
            sweep: str = "length") -> dict:
    """Relative error of one family on ``inputs`` at one budget (None: the configured one)."""
    batch, length, heads, head_dim = inputs.q.shape
    spec = AttentionSpec(num_heads=heads, head_dim=head_dim, max_length=length, dtype=inputs.q.dtype)
    overrides = dict(entry.get("overrides", {}))
    if budget is not None:
        overrides[entry["budget"]] = budget
    row = {"attention": name, "sweep": sweep, "target": entry["target"], "inputs": inputs.source, "length": length,
           "budget_key": entry.get("budget"), "draws": draws}
    try:
        errors, exact, apply = [], None, None
        for draw in range(draws):
            module = build_family(name, spec, overrides, attention_seed=100 + draw, trained=trained_for(name, inputs))
            if exact is None:  # parameters are the same for every draw: one target, one compilation
                exact = exact_output(name, entry, plan, module, spec, inputs)
                apply = evaluator(module)
            errors.append(relative_error(apply(module, inputs), exact, inputs.key_mask))
    except Exception as error:  # noqa: BLE001 - a failing point is a result, not the end of the sweep
        return {**row, "budget": budget, "status": "error", "reason": f"{type(error).__name__}: {error}"[:300]}
    errors = np.asarray(errors)
    return {**row, "budget": effective_budget(module, entry.get("budget")), "status": "ok", "reason": "",
            "rel_error_mean": float(errors.mean()), "rel_error_std": float(errors.std()),
            "rel_error_min": float(errors.min()), "rel_error_max": float(errors.max())}


def run(plan: dict, attentions: list[str], inputs: Inputs, lengths: list[int], budget_length: int | None,
        draws: int = 3, progress: bool = True, on_row=None) -> list[dict]:
    """The length sweep and the budget sweep of every family; each row as soon as it is measured."""
    available = inputs.q.shape[1]  # captured inputs: shorter prefixes, or the captured length itself
    lengths = [n for n in lengths if n <= available] or [available]
    jobs = [(name, "length", n, None) for name in attentions for n in lengths]
    if budget_length is not None:
        budget_length = min(budget_length, available)
        jobs += [(name, "budget", budget_length, b) for name in attentions for b in plan["families"][name]["budgets"]]
    rows = []
    with PointProgress("approx", len(jobs), progress) as bar:
        for name, sweep, length, budget in jobs:
            bar.describe(f"{name} n={length}" + (f" budget={budget}" if budget is not None else ""))
            rows.append(measure(name, plan["families"][name], plan, inputs.prefix(length), budget=budget,
                                draws=draws, sweep=sweep))
            if on_row is not None:
                on_row(rows)
            bar.advance()
    return rows


# ------------------------------------------------------------------------------------------------
# Report and command line
# ------------------------------------------------------------------------------------------------

def markdown_report(rows: list[dict], info: dict) -> str:
    commit = info['git_sha'] + ("-dirty" if info.get("git_dirty") else "")
    lines = [f"# Approximation error — {info['device']}\n",
             f"{info['date']}, git {commit}, jax {info['jax_version']}. Relative error "
             "||out − exact|| / ||exact|| over real query positions; mean ± std over draws.\n",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in info["settings"].items()) + ".\n",
             "Families with no approximation error (exact computations of their own kernel) are not listed: "
             "softmax, softmax_flash, linear, sikf, kernelized, fourierformer; nor the learned-pattern "
             "attentions sinkhorn and synthesizer (their own attention, not an estimate of another).\n"]
    fmt = lambda r: f"{r['rel_error_mean']:.3g} ± {r['rel_error_std']:.2g}" if r["status"] == "ok" else r["status"]
    for sweep, axis in (("length", "length"), ("budget", "budget")):
        chosen = [row for row in rows if row["sweep"] == sweep]
        if not chosen:
            continue
        lines.append(f"## Error versus {axis}\n")
        lines.append(markdown_table(["attention", "target", "budget key", "length", "budget", "rel. error", "draws"],
                                    ([r["attention"], r["target"], r["budget_key"], r["length"], r["budget"], fmt(r),
                                      r["draws"]] for r in chosen)))
    failures = [row for row in rows if row["status"] != "ok"]
    if failures:
        lines.append("## Points that failed\n")
        lines.append(markdown_table(["attention", "length", "budget", "reason"],
                                    ([r["attention"], r["length"], r["budget"], r["reason"]] for r in failures)))
    return "\n".join(lines)


def write_report(directory: Path, rows: list[dict], info: dict) -> None:
    write_csv(directory / "approximation.csv", rows, COLUMNS)
    atomic_write_text(directory / "approximation.md", markdown_report(rows, info))
    ok = [row for row in rows if row["status"] == "ok"]
    plot_lines(directory / "error_vs_length.png", [r for r in ok if r["sweep"] == "length"], x="length",
               y="rel_error_mean", series="attention", panels=("target",), xlabel="sequence length",
               ylabel="relative error (mean over draws)",
               title=f"Error vs length at the configured budget — {rows[0]['inputs'] if rows else ''}")
    plot_lines(directory / "error_vs_budget.png", [r for r in ok if r["sweep"] == "budget"], x="budget",
               y="rel_error_mean", series="attention", panels=("budget_key",), xlabel="budget",
               ylabel="relative error (mean over draws)",
               title=f"Error vs budget at length {next((r['length'] for r in ok if r['sweep'] == 'budget'), '')}")


def comma_list(text: str, cast=str) -> list:
    return [cast(item.strip()) for item in text.split(",") if item.strip()]


def main(argv=None) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attention", default="", help="comma-separated families (default: every family in the plan)")
    parser.add_argument("--lengths", default="256,512,1024,2048,4096", help="length sweep (comma-separated)")
    parser.add_argument("--budget-length", type=int, default=1024, help="length of the budget sweep (0: none)")
    parser.add_argument("--budgets", default="", help="comma-separated budgets for every family "
                        "(default: each family's list in the plan)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4, help="default: the Text model's 4 heads x 64")
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--input-std", type=float, default=1.0, help="std of the random q, k, v entries")
    parser.add_argument("--draws", type=int, default=3, help="independent seeds per point")
    parser.add_argument("--run-dir", default=None, help="a trained run: take q/k/v from one of its layers")
    parser.add_argument("--layer", type=int, default=0, help="with --run-dir: which attention layer")
    parser.add_argument("--plan", default=str(PLAN), help="targets and budgets (configs/bench/approximation.yaml)")
    parser.add_argument("--output-root", default=None, help="default results/bench")
    parser.add_argument("--name", default=None, help="run folder name (default: UTC timestamp)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    plan = load_plan(Path(args.plan))
    attentions = comma_list(args.attention) or list(plan["families"])
    unknown = [name for name in attentions if name not in plan["families"]]
    if unknown:
        raise SystemExit(f"--attention: {unknown} not in {args.plan} (families: {sorted(plan['families'])}); "
                         "the other registered attentions are exact")
    lengths = comma_list(args.lengths, int)
    if args.budgets:
        for entry in plan["families"].values():
            entry["budgets"] = comma_list(args.budgets, int) if entry["budget"] is not None else []
    if args.run_dir:
        inputs = checkpoint_inputs(args.run_dir, args.layer, args.batch)
    else:
        longest = max(lengths + [args.budget_length])
        inputs = random_inputs(args.batch, longest, args.heads, args.head_dim, args.input_std)
    directory = output_directory(args.output_root, args.name)
    info = write_provenance(directory / "provenance.json", {
        "attentions": attentions, "lengths": args.lengths, "budget_length": args.budget_length,
        "budgets": {name: plan["families"][name]["budgets"] for name in attentions},
        "batch": inputs.q.shape[0], "heads": inputs.q.shape[2], "head_dim": inputs.q.shape[3], "draws": args.draws,
        "inputs": inputs.source, "plan": args.plan, "reference_samples": plan["reference_samples"],
        "fastfood_reference_draws": plan["fastfood_reference_draws"]})
    rows = run(plan, attentions, inputs, lengths, args.budget_length or None, draws=args.draws,
               progress=not args.no_progress,
               on_row=lambda rows: write_csv(directory / "approximation.csv", rows, COLUMNS))
    write_report(directory, rows, info)
    print(f"wrote {directory}")
    return directory


if __name__ == "__main__":
    main()
