"""Leaderboard: the results store in the LRA layout, one row per attention x protocol.

    results/<protocol>/leaderboard.md     markdown: the table, provenance, costs per task, the other
                                          checkpoint, how it was computed
    results/<protocol>/leaderboard.html   one static page (no server): sortable columns, plots inline
    results/<protocol>/leaderboard_*.png  accuracy vs speed (marker = memory), per-task bars
    results/leaderboard.{md,html}         every protocol found under results/ in one table

Everything is rebuilt from the result records (``<results_dir>/records/*.json``), never edited by
hand; which records count is ``lra.results.comparable_runs``. How cells,
averages and ratios are computed is in ``lra.leaderboard.table``; the rules, briefly: mean ± std
over seeds with the seed count, missing tasks shown as missing (never zero, averages marked
partial), speed and memory relative to softmax of the same protocol, task and device, and the LRA
parameter rule (at most 10 % more parameters than the baseline) checked per row.

Modules: ``pages`` writes a results folder's pages (``write_leaderboard``, ``write_combined_leaderboard``),
``table`` computes the rows, ``markdown``, ``html`` and ``plots`` render them, ``cli`` is the command:

    python -m lra.leaderboard --results-dir results/smoke    # one protocol: print and write
    python -m lra.leaderboard --root results                 # every protocol + the combined page
"""
