"""scripts/known_routing.py: the construction makes the teacher's routing the task's pair of experts, the metrics
are right on routers whose answer is known, and a run writes the documented lines."""

import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "known_routing.py"
_spec = importlib.util.spec_from_file_location("known_routing", _PATH)
kr = importlib.util.module_from_spec(_spec)
sys.modules["known_routing"] = kr  # dataclasses look their module up there
_spec.loader.exec_module(kr)

SMALL = dict(num_layers=2, prompt_len=8, response_len=8, num_train=96, num_heldout=64)


@pytest.fixture(scope="module", autouse=True)
def one_task_per_setup():
    """kr.build_task and kr.reference_losses are deterministic functions of the Setup (every draw is seeded by
    s.seed), and kr.main calls both before it trains: within this module each Setup's task and its references are
    built once, by the script's own functions, and the runs of kr.main on that Setup get those (main's training
    copies the arrays it donates and writes to none of them)."""
    build_task, reference_losses = kr.build_task, kr.reference_losses
    tasks, refs = {}, {}

    def build_once(s):
        if s not in tasks:
            tasks[s] = build_task(s)
        return tasks[s]

    def references_once(s, task):
        if task is not tasks.get(s):
            return reference_losses(s, task)
        if s not in refs:
            refs[s] = reference_losses(s, task)
        return refs[s]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kr, "build_task", build_once)
        mp.setattr(kr, "reference_losses", references_once)
        yield


@pytest.fixture(scope="module")
def built():
    s = kr.Setup(**SMALL)
    return s, kr.build_task(s)


def test_teacher_routes_each_task_to_its_pair(built):
    s, task = built
    want = np.stack([2 * task["heldout_task"], 2 * task["heldout_task"] + 1], -1)
    hit = np.all(task["pair"] == want[None, :, None, :], axis=-1)  # [L, B, T]
    assert hit.shape == (2, 64, 16)
    assert hit.mean() > 0.95
    # Prompt tokens come from their task's region; responses from the whole vocabulary.
    region = task["heldout"][:, :s.prompt_len] // s.region
    np.testing.assert_array_equal(region, np.broadcast_to(task["heldout_task"][:, None], region.shape))


def test_metrics_on_routers_with_known_answers(built):
    s, task = built
    model = kr.build_model(task["model_cfg"], kr.adapter_config(s, "remix"))
    oracle = kr.evaluate(s, task, model, {"adapter": task["adapter"], "router": task["router"]})
    assert oracle["accuracy"] == 1.0 and oracle["accuracy_prompt"] == 1.0
    # All-zero router: every logit ties, top-2 is experts (0, 1) everywhere, so accuracy is the share of response
    # decisions whose right pair is (0, 1), and q_pair is 2/n.
    zero = jax.tree.map(jnp.zeros_like, task["router"])
    ev = kr.evaluate(s, task, model, {"adapter": task["adapter"], "router": zero})
    resp = task["pair"][:, :, s.prompt_len:]
    expect = np.all(resp == np.array([0, 1]), axis=-1).mean()
    assert ev["accuracy"] == pytest.approx(expect) and 0.1 < expect < 0.4
    assert ev["q_pair"] == pytest.approx(2 / 8)
    refs = kr.reference_losses(s, task)
    assert refs["oracle"] == pytest.approx(oracle["loss"])
    assert refs["oracle"] < refs["uniform_random"] - 0.2 and refs["oracle"] < refs["base_only"] - 0.2
    assert ev["loss"] > refs["oracle"]


def test_run_writes_lines_and_a_dense_router_learns(tmp_path):
    out = tmp_path / "kr.jsonl"
    argv = [f"--{k}={v}" for k, v in SMALL.items()] + [
        "--methods=softmax_dense,remix", "--router_lrs=0.1", "--steps=30", "--eval_every=15", "--batch=16",
        "--num_samples=2", f"--out={out}"]
    kr.main(argv)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["kind"] == "setup" and rows[0]["num_layers"] == 2
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(r["method"], r["step"]) for r in evals] == [
        ("softmax_dense", 0), ("softmax_dense", 15), ("softmax_dense", 30), ("remix", 0), ("remix", 15), ("remix", 30)]
    dense = [r for r in evals if r["method"] == "softmax_dense"]
    assert dense[-1]["q_pair"] > dense[0]["q_pair"] + 0.1 and dense[-1]["gap"] < dense[0]["gap"]
    with pytest.raises(SystemExit, match="exists"):
        kr.main(argv)


def test_summary_table_by_hand():
    def ev(seed, step, acc, gap):
        return {"kind": "eval", "method": "remix", "router_lr": 0.01, "num_samples": 4, "router_init_std": None,
                "seed": seed, "step": step, "accuracy": acc, "gap": gap, "q_pair": 0.5}
    rows = [{"kind": "setup"}, ev(0, 0, 0.1, 1.0), ev(0, 50, 0.95, 0.2), ev(0, 100, 0.97, 0.1),
            ev(1, 0, 0.1, 1.0), ev(1, 50, 0.5, 0.6), ev(1, 100, 0.6, 0.5)]
    lines = kr.summarize(rows).splitlines()
    assert len(lines) == 3
    assert lines[2] == ("| remix | 0.01 | 4 | default | 2 | 100 | 0.300 (0.100-0.500) | 0.785 (0.600-0.970) | "
                        "0.500 (0.500-0.500) | 50 (1 never) |")


def test_one_right_block_of_one_is_the_oracle():
    """With a single block, 'only that block routed by the teacher' is the teacher itself (its sampled draw from
    logits 20x apart is the teacher's top-2), so the reference equals the oracle's loss."""
    s = kr.Setup(**{**SMALL, "num_layers": 1, "num_train": 16})
    task = kr.build_task(s)
    refs = kr.reference_losses(s, task)
    assert len(refs["one_block_right"]) == 1
    assert refs["one_block_right"][0] == pytest.approx(refs["oracle"], rel=1e-4)
    # All blocks right is the teacher.
    assert refs["first_blocks_right"][-1] == pytest.approx(refs["oracle"], rel=1e-4)


def test_task_information_by_hand():
    tasks = np.array([0, 1, 2, 3] * 25)
    sets = np.stack([2 * tasks, 2 * tasks + 1], -1)  # each task its own pair: the set names the task
    assert kr.task_information(sets, tasks, 4) == pytest.approx(1.0)
    same = np.tile([[0, 1]], (100, 1))  # one set for every task: it says nothing about the task
    assert kr.task_information(same, tasks, 4) == pytest.approx(0.0)
    # Tasks 0, 1 share pair A, tasks 2, 3 pair B: the set carries 1 of the 2 bits.
    halves = np.where((tasks < 2)[:, None], [[0, 1]], [[2, 3]])
    assert kr.task_information(halves, tasks, 4) == pytest.approx(0.5)


def test_applied_weights_follow_each_routing_rule():
    z = np.array([[2.0, 1.0, 0.0, -1.0]])
    q = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(kr.applied_weights(z, "remix"), [[0.5, 0.5, 0.0, 0.0]])
    np.testing.assert_allclose(kr.applied_weights(z, "mixlora"), [[q[0, 0], q[0, 1], 0, 0]] / (q[0, 0] + q[0, 1]),
                               rtol=1e-6)
    np.testing.assert_allclose(kr.applied_weights(z, "softmax_dense"), q, rtol=1e-6)
    ess = kr.effective_support_size  # the library's measure, used by evaluate
    assert float(ess(kr.applied_weights(z, "remix"))[0]) == pytest.approx(2.0)
    assert float(ess(np.full((1, 8), 1 / 8))[0]) == pytest.approx(8.0)
    assert float(ess(np.eye(8)[:1])[0]) == pytest.approx(1.0)


def test_trained_experts_start_as_the_base_model_and_learn(tmp_path):
    out = tmp_path / "kr.jsonl"
    kr.main([f"--{k}={v}" for k, v in SMALL.items()] + [
        "--methods=remix,softmax_dense", "--router_lrs=0.03", "--adapter_lrs=0.01", "--steps=20", "--eval_every=20",
        "--batch=16", "--num_samples=2", f"--out={out}"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(r["method"], r["step"], r["adapter_lr"]) for r in evals] == [
        ("remix", 0, 0.01), ("remix", 20, 0.01), ("softmax_dense", 0, 0.01), ("softmax_dense", 20, 0.01)]
    for r in evals:
        if r["step"] == 0:  # fresh experts have B = 0: the student is the base model
            assert r["loss"] == pytest.approx(rows[0]["ref_base_only"], rel=1e-5)
            assert r["gap_base"] == pytest.approx(1.0, abs=1e-4)
        else:  # the experts moved the loss towards the teacher's
            assert r["gap_base"] < 0.95
        assert 0.0 <= r["task_mi"] <= 1.0 and len(r["task_mi_per_block"]) == 2
    remix_end, dense_end = evals[1], evals[3]
    assert remix_end["ess_applied"] == pytest.approx(2.0)  # constant weight on k = 2 experts, whatever the router
    assert dense_end["ess_applied"] == pytest.approx(dense_end["ess"])  # a dense softmax applies its softmax
    table = kr.summarize(rows).splitlines()
    assert table[0].startswith("| method | router lr | adapter lr |") and len(table) == 4
    assert table[2].startswith("| remix | 0.03 | 0.01 | 2 | default | 2 | 1 | 20 | ")  # omega alpha/(k r) = 16/(2*4)
    assert table[3].startswith("| softmax_dense | 0.03 | 0.01 | 1 | default | - | 1 | 20 | ")


def test_paper_omega_is_the_students_weight_and_only_with_trained_experts(tmp_path):
    out = tmp_path / "kr.jsonl"
    common = [f"--{k}={v}" for k, v in SMALL.items()] + ["--router_lrs=0.03", "--steps=2", "--eval_every=2",
                                                       "--batch=8", "--num_samples=2", "--omega=paper"]
    kr.main(common + ["--methods=remix", "--adapter_lrs=0.01", f"--out={out}"])
    evals = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert [r["omega"] for r in evals] == [pytest.approx(2 / (2 * 4))] * 2  # 2 / (k r), k = 2, r = 4; steps 0, 2
    for bad in (["--methods=remix", "--adapter_lrs=0"], ["--methods=mixlora", "--adapter_lrs=0.01"]):
        with pytest.raises(SystemExit, match="omega=paper"):
            kr.main(common + bad + [f"--out={tmp_path / 'other.jsonl'}"])


def test_students_without_a_router_draw_uniformly_and_average_their_draws(built, tmp_path):
    s, task = built
    # The held-out loss of a uniform student is the mean over the same 8 draws as the uniform_random reference,
    # which reference_losses computes by its own path (model.apply, no trace).
    uni = kr.build_model(task["model_cfg"], kr.adapter_config(s, "uniform_random"))
    ev = kr.evaluate(s, task, uni, {"adapter": task["adapter"]}, method="uniform_random")
    assert ev["loss"] == pytest.approx(kr.reference_losses(s, task)["uniform_random"], rel=1e-6)
    assert "ess" not in ev and ev["ess_applied"] == 2.0 and ev["q_pair"] == pytest.approx(2 / (2 * s.tasks))
    out = tmp_path / "kr.jsonl"
    common = [f"--{k}={v}" for k, v in SMALL.items()] + ["--runs=uniform:0,uniform_m:0", "--steps=4",
                                                       "--eval_every=4", "--batch=8", "--num_samples=2"]
    kr.main(common + ["--adapter_lrs=0.01", f"--out={out}"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(r["method"], r["num_samples"], r["step"]) for r in evals] == [
        ("uniform", 1, 0), ("uniform", 1, 4), ("uniform_m", 2, 0), ("uniform_m", 2, 4)]
    for r in evals:
        if r["step"] == 0:  # B = 0: the base model, whatever the draw
            assert r["loss"] == pytest.approx(rows[0]["ref_base_only"], rel=1e-5)
        else:
            assert r["gap_base"] < 1.0
    table = kr.summarize(rows).splitlines()
    assert table[2].startswith("| uniform | 0 | 0.01 | 1 | default | - | 1 | 4 | ") and "| - | 2.000 |" in table[2]
    assert table[3].startswith("| uniform_m | 0 | 0.01 | 2 | default | - | 1 | 4 | ")
    with pytest.raises(SystemExit, match="uniform, uniform_m: no router, so a student only with trained experts"):
        kr.main(common + ["--adapter_lrs=0", f"--out={tmp_path / 'other.jsonl'}"])
