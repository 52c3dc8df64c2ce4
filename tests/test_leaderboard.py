"""The leaderboard (lra.leaderboard): LRA layout, missing and diverged cells, ratios to softmax, the
parameter rule, markdown/HTML/plots and the combined page. Synthetic records only, no training."""

from __future__ import annotations

import statistics

import pytest

from lra.leaderboard.pages import HTML_FILE, LEADERBOARD_FILE, write_combined_leaderboard, write_leaderboard
from lra.leaderboard.table import leaderboard_frame, leaderboard_rows
from lra.results import read_records, write_record
from tests.leaderboard_records import (LINEAR_LISTOPS, PERFORMER_LISTOPS, SOFTMAX_LISTOPS, build_results_root,
                                       pct_mean_std)
from tests.test_results import make_record


@pytest.fixture(scope="module")
def results_root(tmp_path_factory):
    return build_results_root(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def official(results_root):
    frame = leaderboard_frame(leaderboard_rows(read_records(results_root / "lra_official")))
    return {r["attention"]: r for r in frame.to_dict("records")}, list(frame.columns)


def test_lra_layout_one_column_per_task_then_average(official):
    _, columns = official
    assert columns[:5] == ["protocol", "attention", "listops", "text", "average"]
    assert {"speed vs softmax", "memory vs softmax", "peak memory vs softmax", "params vs softmax"} <= set(columns)


def test_cells_are_mean_std_over_seeds_with_count(official):
    rows, _ = official
    assert rows["softmax"]["listops"] == pct_mean_std([r[1] for r in SOFTMAX_LISTOPS]) == "42.50 ± 3.54 (n=2)"
    assert rows["softmax"]["text"] == "60.00 (n=1)"
    assert rows["performer"]["listops"] == pct_mean_std([r[1] for r in PERFORMER_LISTOPS])
    assert rows["softmax"]["average"] == f"{(42.5 + 60.0) / 2:.2f}"


def test_diverged_runs_are_counted_apart_not_averaged(official):
    rows, _ = official
    # the diverged seed (10 %) is not in the mean
    assert rows["linear"]["listops"] == pct_mean_std([r[1] for r in LINEAR_LISTOPS])[:-1] + ", 1 diverged at step 40)"
    assert rows["linear"]["runs"] == "4 (1 diverged)"
    assert rows["wide"]["text"] == "diverged (1 of 1, at step 7)"


def test_missing_task_is_missing_and_average_partial(official):
    rows, _ = official
    assert rows["performer"]["text"] == "—"
    assert rows["performer"]["average"] == "31.00 (partial: 1 of 2 tasks)"
    assert rows["wide"]["average"] == "50.00 (partial: 1 of 2 tasks)"  # a diverged task is not a zero


def test_speed_and_memory_relative_to_softmax_per_task_then_averaged(official):
    rows, _ = official
    soft = statistics.median(r[3] for r in SOFTMAX_LISTOPS)
    linear_steps = [r[3] for r in LINEAR_LISTOPS]  # the diverged run's step time is left out
    expected = (soft / statistics.median(linear_steps) + 0.50 / 0.25) / 2
    assert rows["linear"]["speed vs softmax"] == f"{expected:.2f}×"
    assert rows["softmax"]["speed vs softmax"] == "1.00×"
    assert rows["performer"]["speed vs softmax"] == f"{soft / 0.30:.2f}×"  # median 0.30, not mean 0.50
    assert rows["linear"]["memory vs softmax"] == "0.25×"
    assert rows["performer"]["memory vs softmax"] == "0.50×"
    assert rows["softmax"]["peak memory vs softmax"] == "—"  # CPU records carry no device peak


def test_parameter_rule(official):
    rows, _ = official
    assert rows["linear"]["params vs softmax"] == "1.05× (ok)"
    assert rows["wide"]["params vs softmax"] == "1.20× (over the 10% limit)"
    assert rows["linear"]["params"] == "1,050–2,100"
    assert rows["deep"]["params vs softmax"] == "1.00× (emb_dim, qkv_dim, mlp_dim, num_layers differ from softmax)"
    assert rows["performer"]["params vs softmax"] == "1.00× (ok)"  # no model_config recorded: sizes not compared


def test_rows_sorted_complete_first_then_by_average(official):
    assert list(official[0]) == ["softmax", "linear", "wide", "deep", "performer", "unstable"]
    assert official[0]["unstable"]["average"] == "—" and official[0]["unstable"]["listops"] == "diverged (1 of 1, at step 3)"


def test_ratios_need_the_same_device_and_protocol(tmp_path, results_root):
    write_record(tmp_path, make_record("a", attention="softmax", step_time=0.2, device="gpu"))
    write_record(tmp_path, make_record("b", attention="linear", step_time=0.1, device="cpu"))
    rows = {r.attention: r for r in leaderboard_rows(read_records(tmp_path))}
    assert rows["linear"].speed is None and rows["softmax"].speed == 1.0
    lineage = leaderboard_rows(read_records(results_root / "pytorch_lineage"))
    assert [(r.attention, r.speed, r.param_ratio) for r in lineage] == [("linear", None, None)]


def test_protocol_checkpoint_rule_picks_the_headline(results_root):
    (row,) = leaderboard_rows(read_records(results_root / "pytorch_lineage"))
    assert row.checkpoint == "best_val" and row.cells["listops"].mean == pytest.approx(55.0)
    assert row.other_cells["listops"].mean == pytest.approx(50.0)


def test_unknown_checkpoint_rule_is_an_error(tmp_path):
    write_record(tmp_path, make_record("a", test_checkpoint="last"))
    with pytest.raises(ValueError, match="test_checkpoint"):
        leaderboard_rows(read_records(tmp_path))


def test_write_leaderboard_markdown_html_and_plots(results_root):
    directory = results_root / "lra_official"
    path, text, frame = write_leaderboard(directory)
    assert path == directory / LEADERBOARD_FILE and path.read_text() == text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| protocol"))
    for attention in frame["attention"]:
        # the main table, step time and memory per task, the other checkpoint
        assert len([line for line in lines if line.startswith(f"| lra_official | {attention} |")]) == 3
    softmax_line = next(line for line in lines if line.startswith("| lra_official | softmax |"))
    assert "42.50 ± 3.54 (n=2)" in softmax_line and softmax_line.count("|") == header.count("|")
    assert "Test accuracy at the other checkpoint" in text
    # the table first, how it was computed below it; provenance of the counted records
    assert text.index("| protocol") < text.index("## How this table was computed")
    assert "- devices: cpu\n" in text and "- dates (UTC): 2026-01-01\n" in text
    assert "Not a result" not in text  # lra_official is no smoke protocol
    # absolute costs beside the ratios: linear 0.10 and 0.14 s/step against softmax's median 0.22
    costs = text[text.index("## Step time and memory per task"):text.index("## Test accuracy at the other")]
    linear = next(line for line in costs.splitlines() if line.startswith("| lra_official | linear |"))
    assert "120 ms/step (1.83×, 1.57–2.20), 976.6 KiB (0.25×) (n=2)" in linear
    for png in ("leaderboard_speed_accuracy.png", "leaderboard_task_accuracy.png"):
        assert (directory / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text
    page = (directory / HTML_FILE).read_text()
    assert page.count("<tr data-row=") == len(frame) and "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # self-contained
    assert '<table id="costs"' in page and '<table id="other-checkpoint"' in page and 'id="provenance"' in page
    assert page.index('id="leaderboard"') < page.index('<details class="notes"')


def test_smoke_protocol_gets_a_banner(tmp_path):
    write_record(tmp_path, make_record("s1", protocol="smoke"))
    _, text, _ = write_leaderboard(tmp_path, plots=False)
    assert text.index("> **Not a result.** Protocol `smoke`") < text.index("| protocol")
    page = (tmp_path / HTML_FILE).read_text()
    assert '<div class="banner" id="banner"><strong>Not a result.</strong> Protocol smoke' in page


def test_combined_leaderboard_spans_protocols_and_skips_bench(results_root):
    path, text, frame = write_combined_leaderboard(results_root, plots=False)
    assert path == results_root / LEADERBOARD_FILE
    assert sorted(set(frame["protocol"])) == ["lra_official", "pytorch_lineage"]
    assert len(frame) == 7 and "bench" not in text
    assert (results_root / "pytorch_lineage" / LEADERBOARD_FILE).exists()


def test_write_leaderboard_on_empty_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="records"):
        write_leaderboard(tmp_path)
    with pytest.raises(FileNotFoundError, match="sweep"):
        write_combined_leaderboard(tmp_path)
    assert not (tmp_path / LEADERBOARD_FILE).exists()


@pytest.mark.parametrize("n", [3, 12, 25, 40])
def test_plot_palette_never_repeats(n):
    from lra.leaderboard.plots import palette

    colours = [tuple(round(c, 4) for c in colour) for colour in palette(n)]
    assert len(colours) == n and len(set(colours)) == n


def test_speed_accuracy_plot_at_25_rows_names_points_in_a_legend(tmp_path, monkeypatch):
    from lra.leaderboard import plots
    from lra.leaderboard.table import Cell, Row

    rows = [Row(protocol="lra_official", attention=f"attention_with_a_long_name_{i}", checkpoint="final",
                cells={"listops": Cell(30.0 + 0.01 * i, None, 1, 0)}, other_cells={}, table_tasks=["listops"],
                speed=1.0 + 0.001 * i, memory=1.0) for i in range(25)]  # 25 points almost on top of each other
    figures = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: figures.append(figure) or path)
    plots.speed_accuracy_plot(rows, tmp_path / "scatter.png")
    axes = figures[0].axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == [f"{i + 1}. {row.label}" for i, row in enumerate(rows)]
    # at the points only their numbers, not the names that would overlap
    assert sorted(int(t.get_text()) for t in axes.texts) == list(range(1, 26))
    colours = {tuple(collection.get_facecolor()[0]) for collection in axes.collections}
    assert len(colours) == 25
