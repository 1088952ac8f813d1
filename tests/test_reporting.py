"""remix_jax.sweep.results / plots / report: reading run outputs (both eval record layouts), curves, aggregation by
hand, formatting, and clear errors on malformed files."""

import csv
import json
import math
import pathlib

import pytest

from remix_jax.sweep import Run, expand, plots, report, results


def _write_run(wd, acc, loss_rows, complete=True, nested=False):
    (wd / "eval").mkdir(parents=True)
    rec = ({"task": "gsm8k", "metrics": {"accuracy": acc, "num_examples": 10}} if nested
           else {"task": "gsm8k", "accuracy": acc, "num_correct": 1, "num_total": 10, "heldout_loss": 1.25})
    (wd / "eval" / "gsm8k.json").write_text(json.dumps(rec))
    (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in loss_rows))
    if complete:
        (wd / "run_complete.json").write_text(json.dumps({"step": 20, "wall_s": 3.5}))


ROWS = [{"step": 0, "loss": 3.0, "tokens_per_s": 10.0, "routing/ess_softmax": 3.0,
         "routing/ess_softmax_per_block": [4.0, 2.0]},
        {"step": 10, "loss": 2.0, "tokens_per_s": 30.0, "routing/ess_softmax": 2.0,
         "routing/ess_softmax_per_block": [3.0, 1.0], "eval/gsm8k/accuracy": 0.05}]


def test_collect_run_reads_the_contract(tmp_path):
    run = Run("a", str(tmp_path / "a"), "c.py", {}, {"variant": "x", "seed": 0})
    _write_run(tmp_path / "a", 0.25, ROWS)
    row = results.collect_run(run)
    assert row["status"] == "complete" and row["wall_s"] == 3.5
    # the eval json wins over the eval/ rows of metrics.jsonl
    assert row["gsm8k/accuracy"] == 0.25 and row["gsm8k/heldout_loss"] == 1.25
    assert "gsm8k/num_total" not in row and "gsm8k/num_correct" not in row
    assert row["train/final_loss"] == 2.0 and row["train/tokens_per_s"] == 20.0
    assert row["routing/ess_softmax_final"] == 2.0 and row["variant"] == "x"
    # the evaluation package's nested layout ({"metrics": {...}}) reads the same
    run_b = Run("b", str(tmp_path / "b"), "c.py", {}, {"seed": 1})
    _write_run(tmp_path / "b", 0.5, ROWS[:1], complete=False, nested=True)
    row_b = results.collect_run(run_b)
    assert row_b["status"] == "incomplete" and row_b["gsm8k/accuracy"] == 0.5
    assert results.collect_run(Run("c", str(tmp_path / "c"), "c.py", {}, {}))["status"] == "missing"


def test_curves_pick_blocks():
    assert results.curve(ROWS, "routing/ess_softmax", "last") == ([0, 10], [2.0, 1.0])
    assert results.curve(ROWS, "routing/ess_softmax", 0) == ([0, 10], [4.0, 3.0])
    assert results.curve(ROWS, "routing/ess_softmax", "mean") == ([0, 10], [3.0, 2.0])
    assert results.curve(ROWS, "loss") == ([0, 10], [3.0, 2.0])
    assert results.curve(ROWS, "absent") == ([], [])


def test_aggregate_mean_std_by_hand():
    rows = [{"m": "a", "seed": 0, "acc": 0.5, "status": "complete"},
            {"m": "a", "seed": 1, "acc": 0.6, "status": "complete"},
            {"m": "a", "seed": 2, "acc": 0.9, "status": "complete"},
            {"m": "b", "seed": 0, "acc": 0.2, "status": "complete"},
            {"m": "b", "seed": 1, "acc": 0.99, "status": "incomplete"}]
    ga, gb = results.aggregate(rows, ["m"], ["acc"])
    mean = (0.5 + 0.6 + 0.9) / 3
    std = math.sqrt(((0.5 - mean) ** 2 + (0.6 - mean) ** 2 + (0.9 - mean) ** 2) / 2)
    assert ga["num_seeds"] == 3 and ga["acc"][0] == pytest.approx(mean) and ga["acc"][1] == pytest.approx(std)
    assert gb["num_seeds"] == 1 and gb["acc"][0] == 0.2 and math.isnan(gb["acc"][1])
    half = 4.302653 * std / math.sqrt(3)  # t_{0.975, 2}
    assert results.format_cell("gsm8k/accuracy", ga["acc"]) == (
        f"{100 * mean:.2f} ± {100 * std:.2f} (±{100 * half:.2f}, n=3)")
    assert results.format_cell("train/final_loss", (1.23456, 0.5, 2)) == "1.235 ± 0.5 (±4.492, n=2)"
    assert results.format_cell("gsm8k/accuracy", (0.2616, 0.5, 1)) == "26.16"  # one seed: no interval
    assert results.format_cell("x", (math.nan, math.nan, 0)) == "-"
    table = results.markdown_table([ga, gb], ["m"], ["acc"])
    assert table.splitlines()[3] == "| b | 1 | 0.2 |"  # "acc" is not an accuracy column: no percent


# t_{0.975, df} from printed tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086, 29: 2.045, 30: 2.042,
         60: 2.000, 120: 1.980}


def test_t_quantiles_and_the_cell_format():
    for df, t in T_975.items():
        assert results.t_quantile_975(df) == pytest.approx(t, abs=5e-4), df
    assert results.t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)  # the normal quantile
    with pytest.raises(ValueError, match="degrees of freedom"):
        results.t_quantile_975(0)
    # 3 seeds, mean 26.16 %, std 0.80 %: half-width 4.303 x 0.80 / sqrt(3) = 1.99
    assert results.format_cell("gsm8k/accuracy", (0.2616, 0.0080, 3)) == "26.16 ± 0.80 (±1.99, n=3)"
    assert results.ci95_half_width(0.5, 2) == pytest.approx(12.7062 * 0.5 / math.sqrt(2), rel=1e-5)
    assert math.isnan(results.ci95_half_width(0.5, 1))


def test_param_counts_are_read_shown_once_per_group_and_checked(tmp_path):
    runs = [Run(f"{v}_{s}", str(tmp_path / f"{v}_{s}"), "c.py", {}, {"variant": v, "seed": s})
            for v in ("remix", "lora") for s in (0, 1)]
    counts = {"remix": {"trainable": 12303360, "active": 3179520}, "lora": {"trainable": 3041280, "active": 999}}
    for run in runs:
        _write_run(pathlib.Path(run.workdir), 0.25, ROWS)
        (pathlib.Path(run.workdir) / "params.json").write_text(json.dumps(counts[run.params["variant"]]))
    rows = [results.collect_run(r) for r in runs]
    assert rows[0]["params/trainable"] == 12303360 and rows[0]["params/active"] == 3179520
    assert rows[3]["params/trainable"] == 3041280 and rows[3]["params/active"] == 999
    table = results.markdown_table(results.aggregate(rows, ["variant"], ["gsm8k/accuracy"]), ["variant"],
                                   ["gsm8k/accuracy"]).splitlines()
    assert table[0] == "| variant | seeds | params/trainable | params/active | gsm8k/accuracy (%) |"
    assert table[2] == "| remix | 2 | 12.3M | 3.18M | 25.00 ± 0.00 (±0.00, n=2) |"
    assert table[3] == "| lora | 2 | 3.04M | 999 | 25.00 ± 0.00 (±0.00, n=2) |"
    # a group whose runs differ shows the range; rows without params.json show no count columns
    mixed = results.aggregate(rows, [], ["gsm8k/accuracy"])
    assert results.markdown_table(mixed, [], []).splitlines()[2] == "| 4 | 3.04M-12.3M | 999-3.18M |"
    bare = [{k: v for k, v in r.items() if not k.startswith("params/")} for r in rows]
    assert "params/" not in results.markdown_table(results.aggregate(bare, ["variant"], []), ["variant"], [])
    assert [results.format_count((v,)) for v in (0, 999, 1000, 73728, 123_456, 999_600, 4_700_160, 7_787_520,
                                                 2 * 10**9)] == [
        "0", "999", "1.00K", "73.7K", "123K", "1.00M", "4.70M", "7.79M", "2.00B"]
    (pathlib.Path(runs[0].workdir) / "params.json").write_text('{"trainable": 12, "active": true}')
    with pytest.raises(results.ReportError, match=r"params.json: key 'active' must be a count"):
        results.collect_run(runs[0])
    (pathlib.Path(runs[0].workdir) / "params.json").write_text('{"trainable": 12,')
    with pytest.raises(results.ReportError, match=r"params.json:1: not valid JSON"):
        results.collect_run(runs[0])


def test_malformed_files_name_file_and_line(tmp_path):
    wd = tmp_path / "r"
    wd.mkdir()
    (wd / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1,\n{"step": 2}\n')
    with pytest.raises(results.ReportError, match=r"metrics.jsonl:2: not valid JSON"):
        results.read_jsonl(wd / "metrics.jsonl")
    (wd / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1, "lo')  # a run still writing its last line
    assert results.read_jsonl(wd / "metrics.jsonl", allow_partial_last=True) == [{"step": 0}]
    (wd / "eval").mkdir()
    (wd / "eval" / "gsm8k.json").write_text("{\n  bad\n}")
    with pytest.raises(results.ReportError, match=r"gsm8k.json:2: not valid JSON"):
        results.eval_metrics(wd)


def test_write_report_rejects_unknown_plot_kind(tmp_path):
    from remix_jax.sweep import Sweep

    runs = expand({"config": "c.py"}, str(tmp_path / "runs"))
    sweep = Sweep("s", "s.py", str(tmp_path / "out"), str(tmp_path / "runs"), "c.py", ("python",),
                  tuple(runs), {"plots": [{"kind": "pie"}]})
    with pytest.raises(results.ReportError, match=r"s.py: report.plots\[0\]: unknown kind 'pie'"):
        report.write_report(sweep)


def test_line_and_bar_plots_are_written_and_empty_data_is_refused(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"variant": v, "k": k, "seed": s, "gsm8k/accuracy": 0.1 * k + 0.01 * s, "family": v}
            for v in ("a", "b") for k in (1, 2, 4) for s in (0, 1)]
    line, bar = tmp_path / "line.png", tmp_path / "bar.png"
    assert plots.plot_line(rows, {"x": "k", "y": "gsm8k/accuracy", "series": "family", "xlog": True}, line)
    assert plots.plot_bar(rows, {"x": "variant", "y": "gsm8k/accuracy"}, bar)
    for path in (line, bar):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = tmp_path / "none.png"
    assert not plots.plot_line(rows, {"x": "k", "y": "arc_c/accuracy"}, missing)
    assert not plots.plot_bar(rows, {"x": "variant", "y": "arc_c/accuracy"}, missing)
    assert not missing.exists()


def _curve_runs(tmp_path):
    """Two variants x two seeds; variant a logs eval/heldout_loss at steps 10 and 20, seed 1 of b only at 10;
    one incomplete run that must not count."""
    runs, rows = [], []
    values = {("a", 0): {10: 1.0, 20: 0.5}, ("a", 1): {10: 2.0, 20: 0.7}, ("b", 0): {10: 3.0, 20: 1.5},
              ("b", 1): {10: 5.0}, ("b", 2): {10: 100.0, 20: 100.0}}
    for (v, seed), by_step in values.items():
        wd = tmp_path / f"{v}{seed}"
        wd.mkdir()
        lines = [{"step": s, "loss": 1.0, "routing/max_load_per_block": [0.2, x], "routing/max_load": 0.1}
                 for s, x in ((10, 0.3), (20, 0.9))]
        lines += [{"step": s, "eval/heldout_loss": x} for s, x in by_step.items()]
        (wd / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        if seed < 2:
            (wd / "run_complete.json").write_text(json.dumps({"step": 20, "wall_s": 1.0}))
        run = Run(f"{v}{seed}", str(wd), "c.py", {}, {"variant": v, "seed": seed})
        runs.append(run)
        rows.append(results.collect_run(run))
    return runs, rows


def test_curve_table_means_over_seeds_at_each_step(tmp_path):
    _, rows = _curve_runs(tmp_path)
    table = results.curve_table(rows, "eval/heldout_loss", ["variant"]).splitlines()
    # steps logged by every complete run: 10 only (b's seed 1 has no step 20); the incomplete b2 is left out
    assert table[0] == "| variant | seeds | step 10 |"
    assert table[2] == "| a | 2 | 1.5 ± 0.7071 (±6.353, n=2) |"
    assert table[3] == "| b | 2 | 4 ± 1.414 (±12.71, n=2) |"
    table = results.curve_table(rows, "eval/heldout_loss", ["variant"], steps=[10, 20]).splitlines()
    assert table[2].endswith("| 0.6 ± 0.1414 (±1.271, n=2) |")
    assert table[3].endswith("| 1.5 (n=1) |")  # one of b's two seeds logged step 20
    last = results.curve_table(rows, "routing/max_load", ["variant"], steps=[20], block="last").splitlines()
    assert last[2] == "| a | 2 | 0.9 ± 0 (±0, n=2) |"


def test_report_curves_and_curve_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from remix_jax.sweep import Sweep

    runs, rows = _curve_runs(tmp_path)
    path = tmp_path / "curve.png"
    assert plots.plot_curve(rows, {"y": "eval/heldout_loss", "series": "variant"}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plots.plot_curve(rows, {"y": "absent"}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
    spec = {"curves": [{"title": "Held-out", "metric": "eval/heldout_loss", "rows": ["variant"], "steps": [10]}],
            "plots": [{"kind": "curve", "y": "eval/heldout_loss", "series": "variant", "file": "c.png"}]}
    sweep = Sweep("s", "s.py", str(tmp_path / "out"), str(tmp_path), "c.py", ("python",), tuple(runs), spec)
    report.write_report(sweep)
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Held-out\n\n| variant | seeds | step 10 |\n|---|---|---|\n| a | 2 | 1.5 ± 0.7071" in md
    assert (tmp_path / "out" / "c.png").is_file()
    bad = Sweep("s", "s.py", str(tmp_path / "out"), str(tmp_path), "c.py", ("python",), tuple(runs),
                {"curves": [{"title": "no metric"}]})
    with pytest.raises(results.ReportError, match=r"s.py: report.curves\[0\]: missing 'metric'"):
        report.write_report(bad)


REPO = pathlib.Path(__file__).resolve().parents[1]
COMMITTED = sorted(p.parent.name for p in (REPO / "experiments" / "results").glob("*/results.csv"))


def test_every_committed_result_belongs_to_a_sweep_definition():
    assert COMMITTED  # the small-scale results of experiments/README.md
    assert all((REPO / "experiments" / f"{name}.py").is_file() for name in COMMITTED)
    assert not [p for p in (REPO / "experiments").iterdir() if p.is_dir() and p.name not in ("results", "__pycache__")]


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_results_are_read_back_from_their_runs(name, monkeypatch):
    """experiments/NAME.py aggregates experiments/results/NAME/runs/*: each committed results.csv row is what
    its run's files give at the default location (status, accuracy, held-out loss, final ESS)."""
    from remix_jax.sweep import load_sweep

    monkeypatch.chdir(REPO)
    sweep = load_sweep(pathlib.Path("experiments") / f"{name}.py")
    assert sweep.out_dir == str(pathlib.Path("experiments") / "results" / name)
    with open(REPO / sweep.out_dir / "results.csv", newline="", encoding="utf-8") as f:
        committed = {row["name"]: row for row in csv.DictReader(f)}
    runs = {run.name: run for run in sweep.runs}
    assert set(committed) <= set(runs)
    for run_name, row in committed.items():
        got = results.collect_run(runs[run_name])
        assert got["status"] == row["status"] == "complete", run_name
        assert got["workdir"] == row["workdir"] == str(pathlib.Path(sweep.workdir_root) / run_name)
        for key in ("gsm8k/accuracy", "heldout_loss", "routing/ess_softmax_final"):
            if row.get(key):
                assert got[key] == float(row[key]), (run_name, key)
