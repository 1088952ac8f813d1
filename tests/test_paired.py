"""experiments/paired.py: per-example outcomes written by the evaluation's own writer, paired differences and
McNemar's test against values worked out by hand, the backfill from predictions, and refusal to pair runs that
scored different examples."""

import importlib.util
import json
import math
import pathlib

import pytest

from remix_jax.evaluation.results import per_example_outcomes, write_task_results

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("paired", REPO / "experiments" / "paired.py")
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def _run(root, name, verdicts, ids=None, key="correct"):
    ids = ids if ids is not None else list(range(len(verdicts)))
    preds = [{"id": i, key: bool(v)} for i, v in zip(ids, verdicts, strict=True)]
    return write_task_results(root / "runs" / name, "gsm8k", {"accuracy": sum(verdicts) / len(verdicts)}, preds)


def test_outcomes_written_by_the_evaluation_writer(tmp_path):
    path = _run(tmp_path, "lora__seed=0", [1, 0, 1, 1])
    out = json.loads(path.read_text())["outcomes"]
    assert out["key"] == "correct" and out["values"] == "1011"
    other = per_example_outcomes([{"id": i, "correct": True} for i in (1, 0, 2, 3)])
    assert other["ids_sha256"] != out["ids_sha256"]  # same ids in another order: not pairable
    he = per_example_outcomes([{"task_id": "HumanEval/0", "passed": False}, {"task_id": "HumanEval/1", "passed": True}])
    assert he["key"] == "passed" and he["values"] == "01"
    assert per_example_outcomes([{"id": 0, "loglik": -1.0}]) is None and per_example_outcomes([]) is None


def test_paired_difference_by_hand():
    # method right / baseline wrong on 3 questions, the reverse on 1, 6 agreements: d_i = (1, 1, 1, -1, 0 x 6).
    a, b = "1110" + "110000", "0001" + "110000"
    r = paired.paired_difference(a, b)
    assert (r["method_only"], r["baseline_only"], r["n"]) == (3, 1, 10)
    assert r["diff"] == pytest.approx(20.0)
    # sample variance of d_i: (sum d^2 - n mean^2) / (n - 1) = (4 - 10 * 0.04) / 9 = 0.4
    assert r["half95"] == pytest.approx(100 * 1.96 * math.sqrt(0.4 / 10))
    # McNemar exact: 2 * P(Bin(4, 1/2) <= 1) = 2 * 5/16
    assert r["p_mcnemar"] == pytest.approx(0.625)
    assert paired.mcnemar_exact(0, 0) == 1.0 and paired.mcnemar_exact(5, 0) == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="lengths 2 and 3"):
        paired.paired_difference("10", "101")


def test_compare_seeds_and_mean(tmp_path):
    base = [1, 0, 1, 0, 1, 0, 1, 0]
    _run(tmp_path, "lora__seed=0", base)
    _run(tmp_path, "lora__seed=1", base)
    _run(tmp_path, "remix__seed=0", [1, 1, 1, 0, 1, 0, 1, 0])  # +1/8
    _run(tmp_path, "remix__seed=1", [1, 1, 1, 1, 1, 0, 1, 0])  # +2/8
    _run(tmp_path, "remix__seed=2", [1] * 8)  # no baseline for seed 2: left out
    rows = paired.compare(paired.collect(tmp_path, "gsm8k"), "lora")
    per_seed = [r for r in rows if r["seed"] != "mean"]
    assert [(r["seed"], r["diff"]) for r in per_seed] == [(0, pytest.approx(12.5)), (1, pytest.approx(25.0))]
    mean = rows[-1]
    assert mean["seed"] == "mean" and mean["n"] == 2 and mean["diff"] == pytest.approx(18.75)
    # t(0.975, 1) = 12.706; sd of (12.5, 25) = 8.8388
    assert mean["half95"] == pytest.approx(12.7062 * 8.8388 / math.sqrt(2), rel=1e-3)
    text = paired.markdown(rows, "gsm8k", "lora")
    assert "| remix | 0 | +12.50 |" in text and "| remix | mean of 2 | +18.75 |" in text


def test_refuses_different_examples_and_missing_baseline(tmp_path):
    _run(tmp_path, "lora__seed=0", [1, 0, 1])
    _run(tmp_path, "remix__seed=0", [1, 0, 1], ids=[0, 1, 5])
    found = paired.collect(tmp_path, "gsm8k")
    with pytest.raises(ValueError, match=r"remix__seed=0.*lora__seed=0.*different examples"):
        paired.compare(found, "lora")
    with pytest.raises(KeyError, match="baseline 'dora'"):
        paired.compare(found, "dora")


def test_backfill_from_predictions(tmp_path):
    path = _run(tmp_path, "lora__seed=0", [0, 1, 1])
    record = json.loads(path.read_text())
    del record["outcomes"]  # a json written before the field existed
    path.write_text(json.dumps(record))
    assert paired.run_outcomes(path)["values"] == "011"
    assert "outcomes" not in json.loads(path.read_text())  # read-only without --backfill
    assert paired.run_outcomes(path, backfill=True)["values"] == "011"
    assert json.loads(path.read_text())["outcomes"]["values"] == "011"
    path.with_name("gsm8k.predictions.jsonl").unlink()
    record = json.loads(path.read_text())
    del record["outcomes"]
    path.write_text(json.dumps(record))
    with pytest.raises(FileNotFoundError, match="no per-example outcomes"):
        paired.run_outcomes(path)


def test_cli_writes_report(tmp_path, capsys):
    _run(tmp_path, "lora__seed=0", [1, 0, 0, 0])
    _run(tmp_path, "dora__seed=0", [1, 1, 0, 0])
    assert paired.main([f"--results={tmp_path}", "--task=gsm8k"]) == 0
    lora_report = (tmp_path / "paired_gsm8k.md").read_text()
    assert lora_report == capsys.readouterr().out
    assert paired.main([f"--results={tmp_path}", "--task=gsm8k", "--baseline=dora"]) == 0
    assert (tmp_path / "paired_gsm8k_dora.md").read_text() == capsys.readouterr().out
    assert (tmp_path / "paired_gsm8k.md").read_text() == lora_report  # another baseline never replaces it
    assert paired.main([f"--results={tmp_path}", "--baseline=hydralora"]) == 1
    assert "baseline 'hydralora' has no finished run" in capsys.readouterr().err


def test_fixed_baseline_pairs_every_seed(tmp_path, capsys):
    _run(tmp_path, "lora__seed=0", [1, 1, 0, 0])  # +1/4 over the base
    _run(tmp_path, "lora__seed=1", [1, 1, 1, 0])  # +2/4
    base = _run(tmp_path / "base", "x", [1, 0, 0, 0])
    assert paired.main([f"--results={tmp_path}", "--task=gsm8k", "--baseline=base",
                        f"--baseline_json={base}"]) == 0
    text = (tmp_path / "paired_gsm8k_base.md").read_text()
    assert "| lora | 0 | +25.00 |" in text and "| lora | 1 | +50.00 |" in text
    assert "| lora | mean of 2 | +37.50 |" in text
    # the name must not shadow a method of the runs; a base scored on other examples is refused
    assert paired.main([f"--results={tmp_path}", "--task=gsm8k", "--baseline=lora",
                        f"--baseline_json={base}"]) == 1
    assert "also a method" in capsys.readouterr().err
    other = _run(tmp_path / "other", "x", [1, 0, 0, 0], ids=[3, 2, 1, 0])
    assert paired.main([f"--results={tmp_path}", "--task=gsm8k", "--baseline=base",
                        f"--baseline_json={other}"]) == 1
    assert "different examples" in capsys.readouterr().err


def test_pairs_give_each_method_its_own_baseline(tmp_path, capsys):
    _run(tmp_path, "lora_r8__seed=0", [1, 0, 0, 0])
    _run(tmp_path, "lora_r16__seed=0", [1, 1, 1, 0])
    _run(tmp_path, "remix_k1__seed=0", [1, 1, 0, 0])  # +1/4 over lora_r8, -1/4 under lora_r16
    _run(tmp_path, "remix_k2__seed=0", [1, 1, 1, 1])  # +1/4 over lora_r16
    assert paired.main([f"--results={tmp_path}", "--task=gsm8k",
                        "--pairs=remix_k1:lora_r8,remix_k2:lora_r16"]) == 0
    text = (tmp_path / "paired_gsm8k_pairs.md").read_text()
    assert text == capsys.readouterr().out
    assert "| remix_k1 | lora_r8 | 0 | +25.00 |" in text and "| remix_k2 | lora_r16 | 0 | +25.00 |" in text
    assert not [line for line in text.splitlines() if line.startswith("| lora_r")]  # only the listed methods
    assert not (tmp_path / "paired_gsm8k.md").exists()
    assert paired.main([f"--results={tmp_path}", "--pairs=remix_k1:lora_r24"]) == 1
    assert "baseline 'lora_r24' has no finished run" in capsys.readouterr().err
    assert paired.main([f"--results={tmp_path}", "--pairs=remix_k3:lora_r8"]) == 1
    assert "method 'remix_k3' has no finished run" in capsys.readouterr().err
    assert paired.main([f"--results={tmp_path}", "--pairs=remix_k1"]) == 1
    assert "'remix_k1' is not METHOD:BASELINE" in capsys.readouterr().err


def test_also_joins_the_runs_of_another_sweep(tmp_path, capsys):
    main, rates = tmp_path / "main", tmp_path / "rates"
    _run(main, "lora__seed=0", [1, 0, 0, 0])
    _run(main, "lora__seed=1", [1, 1, 0, 0])
    _run(rates, "mixlora_at_3e-4__seed=0", [1, 1, 1, 0])  # +2/4 over seed 0's LoRA
    _run(rates, "mixlora_at_3e-4__seed=1", [1, 1, 0, 0])  # +0 over seed 1's
    assert paired.main([f"--results={rates}", f"--also={main}", "--pairs=mixlora_at_3e-4:lora"]) == 0
    text = (rates / "paired_gsm8k_pairs.md").read_text()
    assert text == capsys.readouterr().out
    assert "| mixlora_at_3e-4 | lora | 0 | +50.00 |" in text and "| mixlora_at_3e-4 | lora | 1 | +0.00 |" in text
    assert "| mixlora_at_3e-4 | lora | mean of 2 | +25.00 |" in text
    assert not list(main.glob("paired_*"))  # the report goes to --results only
    _run(rates, "lora__seed=0", [0, 0, 0, 0])
    assert paired.main([f"--results={rates}", f"--also={main}", "--pairs=mixlora_at_3e-4:lora"]) == 1
    assert "method(s) lora found both in --results and in" in capsys.readouterr().err
    assert paired.main([f"--results={rates}", f"--also={tmp_path / 'none'}"]) == 1
    assert "holds no runs/ folder" in capsys.readouterr().err


def test_jsons_compare_two_evaluations(tmp_path, capsys):
    a = _run(tmp_path / "a", "x", [1, 1, 1, 0])
    b = _run(tmp_path / "b", "x", [1, 0, 0, 0])  # a right and b wrong on 2 of 4: +50 points
    out = tmp_path / "ab.md"
    assert paired.main([f"--jsons={a},{b}", f"--out={out}"]) == 0
    text = capsys.readouterr().out
    assert out.read_text() == text and f"| {a} | - | +50.00 |" in text and "| 2 | 0 | 0.5 |" in text
    other = _run(tmp_path / "c", "x", [1, 0, 0, 0], ids=[3, 2, 1, 0])
    assert paired.main([f"--jsons={a},{other}"]) == 1
    assert "different examples" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paired.main([f"--jsons={a}"])
    with pytest.raises(SystemExit):
        paired.main([])  # neither --results nor --jsons


def test_mcnemar_with_more_than_1023_discordant_questions():
    """2.0 ** n overflows a float past n = 1023 (an ARC-Easy test split has 2,376 questions): the p-value is still
    computed, here against a log-space sum of the binomial tail."""
    assert paired.mcnemar_exact(600, 600) == 1.0
    b, c = 600, 500
    n = b + c
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(c + 1)]
    top = max(logs)
    expected = 2 * math.exp(top) * sum(math.exp(v - top) for v in logs)
    assert 1e-4 < expected < 1e-2
    assert paired.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9)
