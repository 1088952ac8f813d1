"""scripts/router_gradient_snr.py: its per-draw router gradients are the training objective's (each estimator), its
statistics on hand-computed draws, and a run on a tiny random model writes the documented lines."""

import argparse
import dataclasses
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.training.objective import ObjectiveConfig, adapter_objective

_PATH = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "router_gradient_snr.py"
_spec = importlib.util.spec_from_file_location("router_gradient_snr", _PATH)
snr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(snr)

ARGS = ["--model=random:tiny", "--adapter_noise=0.3", "--rows=4", "--max_length=24", "--num_experts=4",
        "--top_k=2", "--rank=4", "--alpha=8", "--num_samples=3"]


def test_statistics_by_hand():
    g = np.array([[1.0, 0.0], [3.0, 0.0]])  # mean (2, 0), per-coordinate variances (2, 0)
    s = snr.snr_stats(g)
    assert (s["mean_sq"], s["trace_var"], s["snr"], s["snr_debiased"]) == (4.0, 2.0, 2.0, 1.5)
    a = np.array([[1.0, 2.0], [3.0, 2.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])  # a - b = (1, 0) in both draws: no noise, mean difference (1, 0)
    assert snr.agreement(a, b)["mean_diff_sq_over_its_noise"] is None
    b[1, 1] = 4.0  # differences (1, 0) and (1, -2): mean (1, -1), variances (0, 2)
    out = snr.agreement(a, b)
    assert out["mean_diff_sq_over_its_noise"] == pytest.approx(2.0 / (2.0 / 2))
    assert out["rel_mean_diff"] == pytest.approx(np.sqrt(2.0) / np.linalg.norm([1.0, 3.0]))


def test_draw_gradients_are_the_objectives():
    """Each estimator's gradient from the script's shared forward passes equals the router gradient of the training
    objective with that estimator's baseline / credit, for the same routing key."""
    args = argparse.Namespace(
        model="random:tiny", data="", template="chat", rows=4, max_length=24, num_experts=4, top_k=2, rank=4,
        alpha=8.0, omega="lora", num_samples=3, seed=0)
    config = snr.build_config(args)
    bundle = snr.loop.build_model_bundle(config)
    batch = jax.tree.map(jnp.asarray, next(snr.loop.build_loader(config, bundle)))
    trainable = snr.with_adapter_noise(bundle.trainable, 0.3, 1)
    cfg = snr.loop.objective_config(config)
    key = jax.random.key(5)
    grads, logit_std, row_log_q, _, _, num_seq = snr.make_draw(bundle, batch, cfg, trainable["adapter"])(
        trainable["router"], key)
    assert logit_std.shape == (2,) and row_log_q.shape == (3, 4) and float(num_seq) == 4
    for name, (baseline, credit) in snr.ESTIMATORS.items():
        c = dataclasses.replace(cfg, baseline=baseline, credit=credit)
        want = jax.jit(jax.grad(lambda r, c=c: adapter_objective(bundle.model.apply, {**trainable, "router": r},
                                                                 bundle.base, batch, key, c)[0]))(trainable["router"])
        assert max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(want)) > 1e-4
        for got, exp in zip(jax.tree.leaves(grads[name]), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(got), np.asarray(exp), rtol=2e-4, atol=1e-6, err_msg=name)
    assert isinstance(cfg, ObjectiveConfig) and cfg.num_samples == 3


def test_run_writes_setup_block_and_total_lines(tmp_path):
    out = tmp_path / "snr.jsonl"
    assert snr.main([*ARGS, "--draws=3", f"--out={out}"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["setup", "block", "block", "total"]
    setup = rows[0]
    assert setup["num_samples"] == 3 and setup["draws"] == 3 and setup["num_sequences"] == 4
    # log Q of a row sums log q over every routed token of every block: between -T * L * log(n (n-1)) and 0
    assert -setup["tokens"] * 2 * np.log(12) - 1e-3 < setup["log_q_per_row_mean"] * 4 < 0
    for r in rows[1:]:
        for name in snr.ESTIMATORS:
            assert r[name]["trace_var"] > 0 and r[name]["snr"] >= 0
        assert r["logit_std"] > 0
    assert rows[-1]["var_ratio_reinforce_over_rloo"] > 1


def test_zero_adapters_are_refused(capsys):
    with pytest.raises(SystemExit):
        snr.main(["--model=random:tiny"])
    assert "router gradient is 0" in capsys.readouterr().err
