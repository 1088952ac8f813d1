"""experiments/trend.py: per-seed least-squares slopes of a metric against a sweep setting, their mean and t-interval
over seeds, against values worked out by hand; seeds without every setting are left out and named."""

import csv
import importlib.util
import math
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("trend", REPO / "experiments" / "trend.py")
trend = importlib.util.module_from_spec(spec)
spec.loader.exec_module(trend)


def _csv(path, rows):
    cols = ["name", "status", "adapter.top_k", "seed", "variant", "gsm8k/accuracy", "heldout_loss"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})


def _row(k, seed, acc, status="complete", variant="remix", loss=0.5):
    return {"name": f"top_k={k}__seed={seed}", "status": status, "adapter.top_k": k, "seed": seed,
            "variant": variant, "gsm8k/accuracy": acc, "heldout_loss": loss}


def test_slopes_and_interval_by_hand(tmp_path):
    # seed 0: y = 0.20 + 0.01 k (slope 1 point per k); seed 1: 0.25, 0.25, 0.28 at k = 1, 2, 3 (slope 1.5 points);
    # seed 2: 0.30, 0.29, 0.30 (slope 0)
    ys = {0: [0.21, 0.22, 0.23], 1: [0.25, 0.25, 0.28], 2: [0.30, 0.29, 0.30]}
    rows = [_row(k, s, ys[s][k - 1]) for s in ys for k in (1, 2, 3)]
    rows.append(_row(2, 3, 0.9))  # seed 3 lacks k 1 and 3: left out
    rows.append(_row(1, 4, 0.1, status="incomplete"))  # not complete: ignored
    _csv(tmp_path / "results.csv", rows)
    assert trend.main([f"--results={tmp_path}", "--x=adapter.top_k"]) == 0
    t = trend.trend(trend.read_runs(tmp_path / "results.csv", "adapter.top_k", "gsm8k/accuracy", {}), 100.0)
    assert [r["slope"] for r in t["seeds"]] == pytest.approx([1.0, 1.5, 0.0])
    assert [r["last_minus_first"] for r in t["seeds"]] == pytest.approx([2.0, 3.0, 0.0])
    m, h = t["slope"]
    sd = math.sqrt(((1.0 - 2.5 / 3) ** 2 + (1.5 - 2.5 / 3) ** 2 + (0 - 2.5 / 3) ** 2) / 2)
    assert m == pytest.approx(2.5 / 3) and h == pytest.approx(4.302652729911275 * sd / math.sqrt(3))
    assert t["skipped"] == {3: [1.0, 3.0]}
    text = (tmp_path / "trend_gsm8k_accuracy.md").read_text()
    assert "| 1 | 25.00 | 25.00 | 28.00 | +1.50 | +3.00 |" in text
    assert f"| +0.83 [{2.5 / 3 - h:+.2f}, {2.5 / 3 + h:+.2f}] |" in text
    assert "Seed 3 left out: no complete run at adapter.top_k = 1, 3." in text


def test_where_selects_a_variant_and_duplicates_are_refused(tmp_path):
    rows = [_row(k, 0, 0.2 + 0.01 * k) for k in (1, 2)] + [_row(k, 0, 0.5, variant="other") for k in (1, 2)]
    _csv(tmp_path / "results.csv", rows)
    with pytest.raises(SystemExit, match="two complete runs with adapter.top_k=1 and seed 0"):
        trend.main([f"--results={tmp_path}", "--x=adapter.top_k"])
    assert trend.main([f"--results={tmp_path}", "--x=adapter.top_k", "--where=variant=remix"]) == 0
    assert "+1.00 (one seed)" in (tmp_path / "trend_gsm8k_accuracy.md").read_text()


def test_a_missing_column_or_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="results.csv: not found"):
        trend.main([f"--results={tmp_path}", "--x=adapter.top_k"])
    _csv(tmp_path / "results.csv", [_row(1, 0, 0.2)])
    with pytest.raises(SystemExit, match="no column adapter.rank"):
        trend.main([f"--results={tmp_path}", "--x=adapter.rank"])
    with pytest.raises(SystemExit, match="need at least two values of x"):
        trend.main([f"--results={tmp_path}", "--x=adapter.top_k"])
