"""Check attentions on a tiny input before a sweep trains anything.

    python -m lra.preflight softmax,linear,my_kernel      # prints one line per attention

Each attention is built from its YAML (``configs/attention/`` or the user's ``LRA_KERNEL_DIR``) and
called on random q/k/v of shape (2, 64, 2, 8) with one example padded after 40 tokens, in training
and in evaluation mode. It must return q's shape and dtype, finite values at real tokens, and not
raise. A broken attention is named with what it returned; the sweep still runs it (its run is
recorded as failed and the leaderboard shows the failed cell), so nothing else is held up.
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from attention.base import AttentionSpec, ContractError, check_output
from lra.registry import load_attention_config, required_backends, runs_on

SPEC = AttentionSpec(num_heads=2, head_dim=8, max_length=64)
BATCH, LENGTH, REAL = 2, 64, 40


def check_attention(name: str) -> str | None:
    """What is wrong with attention config ``name`` on the tiny input, or None when nothing is."""
    from lra.build import make_attention

    try:
        config = load_attention_config(name)
    except FileNotFoundError as error:
        return f"no config: {error}"
    try:
        requires = required_backends(config.get("requires"), f"attention '{name}'")
    except ValueError as error:
        return str(error)
    if not runs_on(requires, jax.default_backend()):
        return None  # the sweep skips it here and says so
    keys = jax.random.split(jax.random.key(0), 3)
    q, k, v = (jax.random.normal(key, (BATCH, LENGTH, SPEC.num_heads, SPEC.head_dim)) for key in keys)
    mask = jnp.stack([jnp.ones(LENGTH, bool), jnp.arange(LENGTH) < REAL])
    try:
        module = make_attention(name, SPEC)
        for deterministic in (False, True):
            out = module(q, k, v, mask, deterministic=deterministic)
            check_output(out, q, f"'{name}'")
            if not np.isfinite(np.asarray(out)[np.asarray(mask)]).all():
                return (f"attention '{name}' returned non-finite values at real tokens "
                        f"({'evaluation' if deterministic else 'training'} mode)")
    except ContractError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - any failure is what the user needs to see
        first = (str(error).strip().splitlines() or [""])[0]
        return f"attention '{name}' raised {type(error).__name__}: {first}"
    return None


def preflight(names: list[str], echo=print) -> dict[str, str]:
    """Check every attention; print one line each; return {name: problem} for the broken ones."""
    problems = {}
    for name in names:
        problem = check_attention(name)
        echo(f"preflight: {name}: " + ("ok" if problem is None else f"BROKEN - {problem}"))
        if problem is not None:
            problems[name] = problem
    return problems


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("attentions", help="comma-separated attention config names")
    args = parser.parse_args(argv)
    problems = preflight([n for n in args.attentions.split(",") if n])
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
