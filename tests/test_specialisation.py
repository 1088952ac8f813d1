"""experiments/specialisation.py: the Jensen-Shannon divergence against hand values and scipy, the report on eval
jsons written by the evaluation's own writer (hand-computed specialisation), on the jsons of a tiny training run,
errors naming the file and block of a malformed load, and the multi-task sweep's scoring overrides."""

import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest

from remix_jax.evaluation.results import write_task_results
from tests.tiny_run import cli, make_tiny_hf, write_config, write_gsm8k

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("specialisation", REPO / "experiments" / "specialisation.py")
sp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sp)

TASKS = ("arc_c", "arc_e", "boolq", "obqa")


def test_js_divergence_by_hand():
    assert sp.js_divergence([0.25, 0.25, 0.5], [0.25, 0.25, 0.5]) == 0.0
    assert sp.js_divergence([1, 0], [0, 1]) == 1.0
    assert sp.js_divergence([0.5, 0.5, 0, 0], [0, 0, 0.3, 0.7]) == pytest.approx(1.0, abs=1e-15)  # disjoint supports
    # P = (1, 0), Q = (1/2, 1/2): M = (3/4, 1/4); JS = H(M) - (H(P) + H(Q)) / 2 = H(3/4, 1/4) - 1/2
    h_m = -0.75 * math.log2(0.75) - 0.25 * math.log2(0.25)
    assert h_m == pytest.approx(0.8112781244591328)
    assert sp.js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(0.3112781244591328, abs=1e-12)
    assert sp.js_divergence([0.5, 0.5], [1, 0]) == pytest.approx(0.3112781244591328, abs=1e-12)  # symmetric
    with pytest.raises(ValueError, match="shapes"):
        sp.js_divergence([1, 0], [1, 0, 0])


def test_js_divergence_matches_scipy():
    from scipy.spatial.distance import jensenshannon  # the square root of the divergence

    rng = np.random.default_rng(0)
    for _ in range(20):
        p, q = rng.dirichlet(np.ones(8) * 0.3), rng.dirichlet(np.ones(8) * 0.3)
        p[rng.integers(8)] = 0.0  # a zero entry, as an unused expert gives
        p /= p.sum()
        assert sp.js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-12)


def test_normalised_load_and_its_errors():
    top2 = [[1.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.75, 0.75]]  # top-k loads: each block sums to k = 2
    np.testing.assert_array_equal(sp.normalised_load(top2, "f.json"),
                                  [[0.5, 0.25, 0.25, 0.0], [0.125, 0.125, 0.375, 0.375]])
    for load, message in [([[0.5, 0.5], [1.0, -0.1]], r"f\.json: block 1: .*negative"),
                          ([[0.5, 0.5], [0.0, 0.0]], r"f\.json: block 1: load is all zero"),
                          ([[float("nan"), 1.0]], r"f\.json: block 0: .*not finite"),
                          ([[0.5, 0.5], [1.0]], r"f\.json: routing_stats\.load is not an \[L\]\[n\] list"),
                          ([0.5, 0.5], r"f\.json: routing_stats\.load has shape \(2,\)")]:
        with pytest.raises(sp.SpecialisationError, match=message):
            sp.normalised_load(load, "f.json")


def _write_run(root, name, loads, method="remix", subdir="eval", top_k=2, skip=(), halves=None):
    """The four task jsons of a run, with routing statistics where the evaluation puts them (``routing_stats``
    beside the metrics, as training.run_evaluation writes it); ``loads``: {task: [L][n]} or None (no routing);
    ``halves``: {task: two [L][n] loads} recorded as ``load_halves``."""
    run = root / "runs" / name
    for task in TASKS:
        if task in skip:
            continue
        stats = None if loads is None else {"num_tokens": 100, "load": loads[task], "ess_applied": [2.0]}
        if halves and task in halves:
            stats["load_halves"] = halves[task]
        write_task_results(run, task, {"accuracy": 0.5, "num_examples": 2}, [{"id": 0, "correct": True}],
                           extra={"adapter_config": {"method": method, "top_k": top_k}, "routing_stats": stats},
                           subdir=subdir)
    return run


A, B, HALF = [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5]  # top-2 loads (sum 2)


def _synthetic_results(root):
    # remix seed 0: block 0 splits {arc_c, arc_e} (experts 0, 1) from {boolq, obqa} (experts 2, 3): JS 1 on the four
    # cross pairs, 0 on the other two -> 4/6; block 1 identical -> 0. Specialisation (2/3 + 0) / 2 = 1/3.
    _write_run(root, "remix__seed=0", {"arc_c": [A, HALF], "arc_e": [A, HALF], "boolq": [B, HALF], "obqa": [B, HALF]})
    # seed 1: block 0 arc_c on experts {0, 2}, the others on {0, 1}: JS((.5, 0, .5, 0), (.5, .5, 0, 0)) = 1/2 on the
    # three pairs with arc_c -> 3/12 = 1/4; block 1 identical. Specialisation 1/8.
    c = [1.0, 0.0, 1.0, 0.0]
    _write_run(root, "remix__seed=1", {"arc_c": [c, HALF], "arc_e": [A, HALF], "boolq": [A, HALF], "obqa": [A, HALF]})
    # the evaluation before training of seed 0: every task alike
    _write_run(root, "remix__seed=0", {t: [HALF, HALF] for t in TASKS}, subdir="eval_history/step_0/eval")
    # HydraLoRA: dense softmax weights (sum 1); arc_c vs the rest is JS((1, 0), (1/2, 1/2)) in both blocks
    dense = {t: [[0.5, 0.5], [0.5, 0.5]] for t in TASKS}
    dense["arc_c"] = [[1.0, 0.0], [1.0, 0.0]]
    _write_run(root, "hydralora__seed=0", dense, method="hydralora")
    _write_run(root, "lora__seed=0", None, method="lora")
    _write_run(root, "lora__seed=1", None, method="lora")
    _write_run(root, "mixlora__seed=0", {t: [A, A] for t in TASKS}, method="mixlora", skip=("obqa",))


def test_report_on_jsons_of_the_evaluation_writer(tmp_path):
    _synthetic_results(tmp_path)
    found = sp.collect(tmp_path / "runs", TASKS)
    remix = found["routed"]["remix"]
    assert remix[0]["measures"]["specialisation"] == pytest.approx(1 / 3)
    np.testing.assert_allclose(remix[0]["measures"]["per_block"], [2 / 3, 0.0], atol=1e-12)
    assert remix[0]["measures"]["pairs"][("arc_c", "boolq")][0] == 1.0
    assert remix[0]["measures"]["pairs"][("arc_c", "arc_e")][0] == 0.0
    assert remix[1]["measures"]["specialisation"] == pytest.approx(1 / 8)
    assert remix[0]["init"] == 0.0 and "init" not in remix[1]
    assert remix[0]["measures"]["top"]["boolq"][0] == [2, 3] and remix[0]["measures"]["top"]["arc_c"][1] == [0, 1]
    np.testing.assert_allclose(remix[0]["loads"]["arc_c"], [[0.5, 0.5, 0, 0], [0.25] * 4])
    hydra = found["routed"]["hydralora"][0]["measures"]
    assert hydra["specialisation"] == pytest.approx(0.3112781244591328 / 2)  # 3 of 6 pairs in both blocks
    assert found["no_routing"] == {"lora": [0, 1]}
    assert found["incomplete"] == [("mixlora__seed=0", "eval/obqa.json")]

    printed, written = sp.report(tmp_path, TASKS)
    md = (tmp_path / "specialisation.md").read_text()
    assert [p.name for p in written] == ["specialisation.md", "specialisation_hydralora.png",
                                         "specialisation_remix.png"]  # methods in the order of their folders' names
    for png in written[1:]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # mean of (1/3, 1/8) = 0.229167, sample std |1/3 - 1/8| / sqrt(2) = 0.147314; at initialisation: seed 0 only
    assert "| remix | 0,1 | 0.229 ± 0.147 (n=2) | 0.000 |" in md
    assert "| hydralora | 0 | 0.156 | - | - | 0.311 | 0.311 | 0.311 | 0.000 | 0.000 | 0.000 |" in md
    assert "No routing (no routing statistics in the jsons): lora (seeds 0, 1)" in md
    assert "Incomplete (left out): mixlora__seed=0 (no eval/obqa.json)" in md
    assert "No evaluation-noise reference" in md
    # per block: JS_l mean ± std over seeds, block 0 (2/3, 1/4) -> 0.458 ± 0.295; each pair's mean over seeds, e.g.
    # arc_c/arc_e (0 + 1/2) / 2, arc_c/boolq (1 + 1/2) / 2, arc_e/boolq (1 + 0) / 2, boolq/obqa (0 + 0) / 2
    assert "| 0 | 0.458 ± 0.295 (n=2) | 0.250 | 0.750 | 0.750 | 0.500 | 0.500 | 0.000 |" in md
    assert "| 1 | 0.000 ± 0.000 (n=2) |" in md
    assert "| 0 | 0 (50%), 1 (50%) | 0 (50%), 1 (50%) | 2 (50%), 3 (50%) | 2 (50%), 3 (50%) |" in md
    assert "![remix: expert load per block](specialisation_remix.png)" in md
    assert printed in md and "## Summary" in printed and "### remix, seed 0" not in printed


def test_within_task_reference_from_the_halves(tmp_path):
    # arc_c's two halves route block 0 to disjoint pairs (JS 1) and block 1 alike (0): within 1/2; the other
    # tasks' halves are identical (0). Mean over tasks 1/8; the tasks themselves as in seed 0 above (1/3).
    loads = {"arc_c": [A, HALF], "arc_e": [A, HALF], "boolq": [B, HALF], "obqa": [B, HALF]}
    halves = {t: [v, v] for t, v in loads.items()}
    halves["arc_c"] = [[A, HALF], [B, HALF]]
    _write_run(tmp_path, "remix__seed=0", loads, halves=halves)
    m = sp.collect(tmp_path / "runs", TASKS)["routed"]["remix"][0]["measures"]
    assert m["within"] == {"arc_c": 0.5, "arc_e": 0.0, "boolq": 0.0, "obqa": 0.0} and m["within_mean"] == 0.125
    sp.report(tmp_path, TASKS)
    md = (tmp_path / "specialisation.md").read_text()
    assert "| remix | 0 | 0.333 | - | 0.125 |" in md
    assert "No evaluation-noise reference" not in md
    assert "Per task (mean over seeds): arc_c 0.500, arc_e 0.000, boolq 0.000, obqa 0.000." in md
    # one seed without halves (an older evaluation): its column cell is left out, and the note says no reference
    _write_run(tmp_path, "remix__seed=1", loads)
    sp.report(tmp_path, TASKS)
    md = (tmp_path / "specialisation.md").read_text()
    assert "| remix | 0,1 | 0.333 ± 0.000 (n=2) | - | 0.125 |" in md and "No evaluation-noise reference" in md
    # halves of another shape than the load: an error naming the file
    halves["obqa"] = [[A], [A]]
    _write_run(tmp_path / "bad", "remix__seed=0", loads, halves=halves)
    with pytest.raises(sp.SpecialisationError, match=r"remix__seed=0/eval/obqa\.json: routing_stats\.load_halves "
                                                     r"has shapes \[\[1, 4\], \[1, 4\]\], the load \[2, 4\]"):
        sp.collect(tmp_path / "bad" / "runs", TASKS)


def test_cli_errors_name_the_file_and_write_nothing(tmp_path, capsys):
    _synthetic_results(tmp_path)
    bad = {t: [A, HALF] for t in TASKS}
    bad["boolq"] = [A, [0.0, 0.0, 0.0, 0.0]]
    _write_run(tmp_path, "remix__seed=2", bad)
    assert sp.main([f"--results={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "remix__seed=2/eval/boolq.json: block 1: load is all zero" in err
    assert not (tmp_path / "specialisation.md").exists() and not list(tmp_path.glob("*.png"))
    # routing statistics in some of a run's jsons and not in others'
    mixed = tmp_path / "mixed"
    _write_run(mixed, "remix__seed=0", {t: [A] for t in TASKS})
    _write_run(mixed, "remix__seed=0", None, skip=("arc_c", "arc_e", "boolq"))
    assert sp.main([f"--results={mixed}"]) == 1
    assert "remix__seed=0/eval/obqa.json: no routing statistics, but" in capsys.readouterr().err
    # load vectors of different lengths between tasks
    shapes = tmp_path / "shapes"
    _write_run(shapes, "remix__seed=0", {**{t: [A] for t in TASKS}, "obqa": [[1.0, 1.0, 0.0]]})
    assert sp.main([f"--results={shapes}"]) == 1
    assert "load shapes differ between tasks" in capsys.readouterr().err
    assert sp.main([f"--results={tmp_path / 'nothing'}"]) == 1
    assert "no such folder of runs" in capsys.readouterr().err
    with pytest.raises(sp.SpecialisationError, match="two or more distinct tasks"):
        sp.report(tmp_path, ["arc_c"])


def test_multitask_sweep_scores_per_token_and_records_routing(monkeypatch):
    from remix_jax.evaluation.builtin_tasks import legacy_spec
    from remix_jax.sweep import load_sweep
    from remix_jax.sweep.definition import _load_config

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("REMIX_MODEL_PATH", "model.gguf")
    monkeypatch.delenv("REMIX_LLM_ADAPTERS_DIR", raising=False)
    sweep = load_sweep(REPO / "experiments" / "multitask.py", workdir_root="/nonexistent")
    assert sorted({r.params["variant"] for r in sweep.runs}) == ["hydralora", "lora", "mixlora", "remix"]
    assert len(sweep.runs) == 12
    for run in sweep.runs:
        assert run.overrides["eval.mc_normalize"] is True and run.overrides["eval.routing_stats"] is True
        assert "--config.eval.mc_normalize=True" in run.command(["prog"])
        config = _load_config(run.config)
        assert config.eval.mc_normalize is False  # the config's own default: the sweep's override is what sets it
        config.eval.mc_normalize = run.overrides["eval.mc_normalize"]
        for task in TASKS:
            assert legacy_spec(task, config.eval).metrics == ("acc_per_token",)
    table = sweep.report["tables"][0]
    assert table["columns"] == [f"{t}/accuracy" for t in TASKS] and "per-token" in table["title"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    """A 3-step ReMix run of a tiny model whose final evaluation (and the one before training) scores the four
    multi-task tasks, 2 questions each, per-token normalised: the folder ``results/runs/remix__seed=0``."""
    root = tmp_path_factory.mktemp("specialisation")
    model = make_tiny_hf(root / "model")
    train = write_gsm8k(root / "train.jsonl")
    extra = {"eval.tasks": ",".join(TASKS), "eval.mc_normalize": True, "eval.batch_size": 1}  # several batches
    folders = {"arc_c": "ARC-Challenge", "arc_e": "ARC-Easy", "boolq": "boolq", "obqa": "openbookqa"}
    for task, folder in folders.items():
        extra[f"eval.{task}.path"] = str(data_dir / "llm_adapters" / folder / "test.json")
        extra[f"eval.{task}.shots"] = 0
    config = write_config(root / "config.py", model, train, data_dir / "gsm8k" / "test.jsonl", **extra)
    workdir = root / "results" / "runs" / "remix__seed=0"
    r = cli("main", f"--config={config}", f"--workdir={workdir}")
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "results", workdir


def test_real_evaluation_jsons(tiny_run):
    results, workdir = tiny_run
    for task in TASKS:
        record = json.loads((workdir / "eval" / f"{task}.json").read_text())
        assert record["metrics"]["primary_metric"] == "acc_per_token"
        assert record["metrics"]["accuracy"] == record["metrics"]["acc_per_token"]
        load = record["routing_stats"]["load"]  # where the training run's evaluation puts the routing statistics
        assert np.asarray(load).shape == (2, 4)  # [blocks of the tiny model, experts]
        np.testing.assert_allclose(np.sum(load, axis=1), 2.0, atol=1e-5)  # top-2: k slots per token
        # the two halves of the task's batches: together they are the whole, token-weighted
        stats = record["routing_stats"]
        (h0, h1), (n0, n1) = np.asarray(stats["load_halves"]), stats["num_tokens_halves"]
        assert h0.shape == h1.shape == (2, 4) and n0 > 0 and n1 > 0 and n0 + n1 == stats["num_tokens"]
        np.testing.assert_allclose((n0 * h0 + n1 * h1) / (n0 + n1), load, atol=1e-6)
        assert record["adapter_config"]["top_k"] == 2
    found = sp.collect(results / "runs", TASKS)
    entry = found["routed"]["remix"][0]
    for task in TASKS:
        np.testing.assert_allclose(entry["loads"][task].sum(axis=1), 1.0, atol=1e-12)
    assert 0.0 <= entry["measures"]["specialisation"] <= 1.0 and "init" in entry
    assert all(len(e) == 2 for t in TASKS for e in entry["measures"]["top"][t])
    printed, written = sp.report(results, TASKS)
    assert "| remix | 0 |" in printed and (results / "specialisation_remix.png").is_file()
    assert 0.0 <= entry["measures"]["within_mean"] <= 1.0 and "Noise reference" in printed
