"""Draw docs/figures/pathfinder_samples.png: generated Pathfinder-32 and Path-X images.

    .venv/bin/python scripts/pathfinder_samples.py [--seed 0] [--out docs/figures/pathfinder_samples.png]

Two negatives and two positives at 32x32 and at 128x128 from the built-in generator with the task
configs' (LRA) parameters, shown pixel for pixel (nearest-neighbour upscaling). Release images are
not shown: the LRA archive is not available offline here (see docs/pathfinder.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lra.data.pathfinder_generator import params_for, sample_grid  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/pathfinder_samples.png"))
    args = parser.parse_args()

    rows = [(32, "Pathfinder-32 (1,024 tokens)"), (128, "Path-X, 128x128 (16,384 tokens)")]
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 5.9))
    for (resolution, title), row in zip(rows, axes):
        for ax, sample in zip(row, sample_grid(params_for(resolution), args.seed, per_label=2)):
            ax.imshow(sample.pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(f"{'positive' if sample.label else 'negative'} (label {sample.label})", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(title, fontsize=9)
    fig.suptitle(f"Built-in generator, LRA parameters, seed {args.seed}: generated images, not the release",
                 fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
