"""The leaderboard as a markdown page: the main table, the notes that say how it was computed, and
the secondary table of the checkpoint each protocol does not report."""

from __future__ import annotations

import pandas as pd

from lra.leaderboard.table import BASELINE, PARAMETER_RULE, Row, leaderboard_frame, other_checkpoint_frame

CHECKPOINT_NAMES = {"final": "the final parameters", "best_val": "the best-validation parameters"}


def markdown_table(frame: pd.DataFrame) -> str:
    columns = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def notes(rows: list[Row], source: str) -> str:
    checkpoints = sorted({(row.protocol, row.checkpoint) for row in rows})
    reported = "; ".join(f"`{protocol}`: {CHECKPOINT_NAMES[checkpoint]}" for protocol, checkpoint in checkpoints)
    return (
        f"Built from {source}. Rows are attention × protocol; numbers from different protocols are not "
        "comparable.\n\n"
        f"- Task cells: test accuracy in %, mean ± sample std over seeds (n = seeds that finished). "
        f"Checkpoint reported — {reported}.\n"
        "- `—`: the attention has no run of that task. A missing task is never counted as zero: the average "
        "is over the tasks of the protocol's table, and a row missing some is marked partial.\n"
        "- Diverged runs (non-finite loss) are left out of means and counted in the cell and in `runs`.\n"
        f"- Speed and memory: ratios to `{BASELINE}` of the same protocol, task and device (medians over "
        "seeds), per task and then averaged over the tasks both ran. Speed = softmax step time / this step "
        "time (higher is faster). Memory = XLA's compiled train-step memory / softmax's; peak memory = the "
        "device allocator's peak / softmax's (GPU only; the allocator's peak is a running maximum over the "
        "process, so it is per run only with one run per process, e.g. LAUNCHER=submitit_local).\n"
        f"- Parameters vs `{BASELINE}`: the largest per-task ratio; the LRA rule allows at most "
        f"{PARAMETER_RULE - 1:.0%} more parameters than the baseline Transformer and the same embedding "
        "size, hidden sizes and depth (checked against the recorded model config).\n")


def leaderboard_markdown(results: pd.DataFrame, rows: list[Row], source: str, plots: list[str] = ()) -> str:
    text = ["# LRA leaderboard\n\n", notes(rows, source), "\n", markdown_table(leaderboard_frame(results, rows))]
    text += ["\n## Test accuracy at the other checkpoint\n\n",
             "Each protocol reports one checkpoint (above); this is the other one, for comparison.\n\n",
             markdown_table(other_checkpoint_frame(rows))]
    if plots:
        text.append("\n## Plots\n\n" + "".join(f"![{name}]({name})\n\n" for name in plots))
    return "".join(text)
