"""The leaderboard as a markdown page: a banner on protocols whose accuracies mean nothing, the main
table, where the numbers come from (provenance), step time and memory per task, the secondary table
of the checkpoint each protocol does not report, then the notes that say how it was computed."""

from __future__ import annotations

import pandas as pd

from lra.leaderboard.table import (BASELINE, PARAMETER_RULE, Row, cost_frame, leaderboard_frame,
                                  other_checkpoint_frame, provenance_lines, variant_notes)
from lra.results import Selection
from lra.run_logging import SMOKE_PROTOCOLS

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
        "- Rows: runs pool only with runs of the same settings. A row is an attention under a protocol with "
        "the protocol's own settings, or, labelled `attention [key=value, ...]`, with the settings that "
        "differ from them (as Hydra overrides). In a cell, only runs of the newest fingerprint (settings, data "
        "and the attention's source code) count: older ones are superseded. A seed counts once, its newest "
        "record; `runs` says how many records were left out.\n"
        f"- Task cells: test accuracy in %, mean ± sample std over seeds (n = distinct seeds that finished). "
        f"Checkpoint reported — {reported}.\n"
        "- `—`: the attention has no run of that task. A missing task is never counted as zero: the average "
        "is over the tasks of the protocol's table, and a row missing some is marked partial.\n"
        "- Diverged runs (non-finite loss) and failed runs (the run raised; see its record's `error` and "
        "`log_path`) are left out of means and counted in the cell and in `runs`.\n"
        f"- Speed and memory: ratios to `{BASELINE}` of the same protocol, task and device (medians over "
        "seeds), per task and then averaged over the tasks both ran. Speed = softmax step time / this step "
        "time (higher is faster). Memory = XLA's compiled train-step memory / softmax's; peak memory = the "
        "device allocator's peak / softmax's (GPU only; the allocator's peak is a running maximum over the "
        "process, so it is per run only with one run per process, e.g. LAUNCHER=submitit_local).\n"
        f"- Parameters vs `{BASELINE}`: the largest per-task ratio; the LRA rule allows at most "
        f"{PARAMETER_RULE - 1:.0%} more parameters than the baseline Transformer and the same embedding "
        "size, hidden sizes and depth (checked against the recorded model config).\n")


def smoke_banner(rows: list[Row]) -> str | None:
    """The warning for rows of a protocol whose accuracies mean nothing (None when there are none)."""
    smoke = sorted({row.protocol for row in rows} & set(SMOKE_PROTOCOLS))
    if not smoke:
        return None
    return (f"Protocol {', '.join(f'`{p}`' for p in smoke)} is a wiring check (tiny data, a few steps): its "
            "accuracies mean nothing and its speed and memory figures are for that tiny configuration only.")


COSTS_INTRO = (f"Per task: median step time over seeds (speed vs `{BASELINE}`: its median step time / this "
               "one, then the min–max of that ratio over this row's seeds), XLA's train-step memory (vs "
               f"`{BASELINE}`), the device allocator's peak where measured (GPU), and the seed count.\n\n")


def left_out_table(selection: Selection) -> pd.DataFrame:
    """The records the leaderboard did not count, and why."""
    why = [(r, "an older record of a seed counted by its newest") for r in selection.repeats] + [
        (r, "an older fingerprint (other code, data or settings) than the newest runs of its cell")
        for r in selection.superseded]
    return pd.DataFrame([{"run_id": r["run_id"], "protocol": r["protocol"], "task": r["task"],
                          "attention": r["attention"], "variant": r.get("variant") or "", "seed": r["seed"],
                          "status": r["status"], "why left out": reason} for r, reason in why])


def leaderboard_markdown(rows: list[Row], source: str, plots: list[str] = (),
                         selection: Selection | None = None) -> str:
    text = ["# LRA leaderboard\n\n"]
    banner = smoke_banner(rows)
    if banner:
        text.append(f"> **Not a result.** {banner}\n\n")
    text.append(markdown_table(leaderboard_frame(rows)))
    variants = variant_notes(rows)
    if variants:
        text += ["\nVariants named by id above, in full:\n\n"] + [f"- `{vid}`: `{v}`\n" for vid, v in variants]
    if selection is not None:
        text += ["\n## Provenance\n\n"] + [f"- {line}\n" for line in provenance_lines(selection.kept)]
    text += ["\n## Step time and memory per task\n\n", COSTS_INTRO, markdown_table(cost_frame(rows))]
    text += ["\n## Test accuracy at the other checkpoint\n\n",
             "Each protocol reports one checkpoint (above); this is the other one, for comparison.\n\n",
             markdown_table(other_checkpoint_frame(rows))]
    text += ["\n## How this table was computed\n\n", notes(rows, source)]
    left_out = left_out_table(selection) if selection is not None else pd.DataFrame()
    if not left_out.empty:
        text += ["\n## Records left out\n\n", markdown_table(left_out)]
    if plots:
        text.append("\n## Plots\n\n" + "".join(f"![{name}]({name})\n\n" for name in plots))
    return "".join(text)
