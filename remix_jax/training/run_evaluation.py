"""Evaluation while training: the tasks of ``config.eval`` and the held-out loss, scored on the model being
trained (``run_config.eval_config()`` is the section's schema; ``training.run`` schedules the calls).

Each evaluation scores every task of ``eval.tasks`` with ``remix_jax.evaluation.evaluator`` (as
``python -m remix_jax.evaluate`` does) and, when configured, the mean response-token cross-entropy of
``eval.heldout.num_batches`` batches of ``eval.heldout.source`` (top-k routing, no sampling). The final one
(step ``train.num_steps``) writes WORKDIR/eval/<task>.json (+ predictions; "heldout_loss" is added to each
task's metrics) and WORKDIR/eval/heldout.json; earlier ones go to WORKDIR/eval_history/step_<N>/eval/.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.evaluation.scoring import DEFAULT_PACK_LEN
from remix_jax.inference.prefill import DEFAULT_PREFILL_CHUNK
from remix_jax.run_config import heldout_batches, validate_eval
from remix_jax.training.losses import chunked_token_cross_entropy

HELDOUT = "heldout"  # the held-out loss's result name (eval/heldout.json)


HELDOUT_CHUNKS = 8  # loss chunks a held-out row is cut into: a chunk without a response token skips the head


def heldout_loss_fn():
    """jit(model, variables, batch, rng) -> (sum of response-token CE, number of response tokens).

    The vocabulary projection runs only on the chunks of positions that predict a response token (each row's
    such positions first: ``losses.chunked_token_cross_entropy`` with ``needed``), not on the prompts: the same
    cross-entropy up to float rounding, with a quarter of the head's products on the quickstart's batches."""

    @functools.partial(jax.jit, static_argnames=("model",))
    def loss_sums(model, variables, batch, rng):
        (hidden, head), _ = model.apply(variables, batch["tokens"], segment_ids=batch["segment_ids"],
                                        positions=batch["positions"], deterministic=True, rngs={"routing": rng},
                                        return_hidden=True)
        mask = batch["loss_mask"].astype(jnp.float32) * (batch["segment_ids"] > 0)
        chunk = -(-batch["tokens"].shape[1] // HELDOUT_CHUNKS)
        ce = chunked_token_cross_entropy(hidden, head, batch["tokens"], chunk, needed=mask > 0)
        # where, not a product: a position that is not needed has ce 0 or its value, never read.
        ce = jnp.where(mask > 0, ce, 0.0)
        return jnp.sum(ce), jnp.sum(mask)

    return loss_sums


def heldout_data(train_cfg, ev, bundle) -> list[dict]:
    """The held-out batches (numpy), read once in file order."""
    n = heldout_batches(ev)
    d = train_cfg.data
    if ev.heldout.source.name == "synthetic":
        from remix_jax.training.synthetic import SyntheticLoader

        loader = SyntheticLoader(d.batch_size, d.max_length, bundle.model_cfg.vocab_size, seed=d.seed + 7919)
        return [dict(next(loader)) for _ in range(n)]
    from remix_jax.data import build_train_loader

    data_cfg = copy.deepcopy(d)
    with data_cfg.unlocked():
        data_cfg.sources = {HELDOUT: ev.heldout.source}
        data_cfg.shuffle = False
        data_cfg.num_epochs = 1
        if "synthetic" in data_cfg:
            del data_cfg["synthetic"]
    loader = build_train_loader(data_cfg, bundle.tokenizer)
    batches = []
    for _ in range(n):
        try:
            batch = next(loader)
        except StopIteration:
            break
        if not np.any(batch["loss_mask"]):
            break
        batches.append({k: np.asarray(v) for k, v in batch.items()})
    return batches


class RunEvaluator:
    """Evaluates the model being trained: ``__call__(step, state) -> {"<task>/accuracy", "heldout_loss"}``
    (the loop prefixes "eval/"), writing the result files described in the module docstring."""

    def __init__(self, config, train_cfg, ev, workdir: str, bundle, log=print):
        from remix_jax.models.loading import load_tokenizer

        self.config, self.train_cfg, self.ev, self.workdir, self.log = config, train_cfg, ev, workdir, log
        self.bundle = bundle
        self.progress = bool(train_cfg.train.get("progress", True))
        self.total = int(train_cfg.train.num_steps)
        self.tasks = validate_eval(ev, train_cfg)
        self.tokenizer = load_tokenizer(ev.tokenizer) if ev.tokenizer else bundle.tokenizer
        if self.tasks and self.tokenizer is None:
            raise ValueError(f"model.path={train_cfg.model.path!r} has no tokenizer; set eval.tokenizer")
        if self.tasks:
            from remix_jax.evaluation import chat_format

            chat_format.check_tokenizer(ev, self.tokenizer, train_cfg.model.path)
        self.heldout = heldout_data(train_cfg, ev, bundle) if heldout_batches(ev) else []
        self._loss = heldout_loss_fn() if self.heldout else None
        self.rng = jax.random.key(int(ev.seed))
        self.history: dict[int, dict] = {}

    def variables(self, base, trainable) -> dict:
        return {"params": base, **{k: v for k, v in trainable.items() if v}}

    def heldout_loss(self, variables) -> float:
        total, count = 0.0, 0.0
        for i, batch in enumerate(self.heldout):
            s, c = self._loss(self.bundle.model, variables, {k: jnp.asarray(v) for k, v in batch.items()},
                              jax.random.fold_in(self.rng, i))
            total, count = total + float(s), count + float(c)
        return total / max(count, 1.0)

    def evaluate(self, step: int, variables) -> dict[str, float]:
        """Run every configured evaluation of ``variables`` at ``step``; writes files, returns scalars."""
        from remix_jax.evaluation import evaluator, results

        t0 = time.perf_counter()
        final = step >= self.total
        out_dir = self.workdir if final else os.path.join(self.workdir, "eval_history", f"step_{step}")
        is_main = jax.process_index() == 0
        scalars: dict[str, float] = {}
        heldout = None
        parts = []  # where the time went, for the log line
        if self.heldout:
            t_heldout = time.perf_counter()
            heldout = self.heldout_loss(variables)
            scalars["heldout_loss"] = heldout
            parts.append(f"held-out loss {time.perf_counter() - t_heldout:.1f} s")
        extra = {"model_path": self.train_cfg.model.path, "adapters": f"training step {step}",
                 "adapter_config": dict(self.train_cfg.adapter), "step": step}
        if heldout is not None and is_main:
            n_tok = int(sum(float((b["loss_mask"] * (b["segment_ids"] > 0)).sum()) for b in self.heldout))
            results.write_task_results(
                out_dir, HELDOUT,
                {"heldout_loss": heldout, "num_batches": len(self.heldout), "num_tokens": n_tok}, [],
                config=self.config, extra={**extra, "source": self.ev.heldout.source.to_dict()})
        if self.tasks:
            runner = evaluator.ModelRunner(self.bundle.model, variables, self.tokenizer,
                                           batch_size=int(self.ev.batch_size),
                                           routing_stats=bool(self.ev.routing_stats), seed=int(self.ev.seed),
                                           remix_kernels=str(self.ev.get("remix_kernels", "auto")),
                                           share_context=bool(self.ev.get("share_context", True)),
                                           prefill_chunk=int(self.ev.get("prefill_chunk", DEFAULT_PREFILL_CHUNK)),
                                           pack_len=int(self.ev.get("pack_len", DEFAULT_PACK_LEN)),
                                           progress=self.progress)
            for task in self.tasks:
                res, seconds = evaluator.run_task_timed(task, runner, self.ev)
                parts.append(f"{task} {evaluator.format_seconds(seconds)}")
                metrics = dict(res.metrics)
                if heldout is not None:
                    metrics["heldout_loss"] = heldout
                if is_main:
                    results.write_task_results(out_dir, task, metrics, res.predictions, config=self.config,
                                               extra={**extra, "routing_stats": res.routing_stats,
                                                      "seconds": seconds})
                if metrics.get("accuracy") is not None:
                    scalars[f"{task}/accuracy"] = float(metrics["accuracy"])
                if res.routing_stats and "ess_applied_mean" in res.routing_stats:
                    scalars[f"{task}/ess_applied"] = float(res.routing_stats["ess_applied_mean"])
        shown = ", ".join(f"{k}={v:.4f}" for k, v in scalars.items())
        where = f"; {'; '.join(parts)}" if parts else ""
        self.log(f"evaluation at step {step} ({time.perf_counter() - t0:.1f} s{where}): {shown}")
        bad = [k for k, v in scalars.items() if not math.isfinite(v)]
        if bad:
            self.log(f"warning: evaluation at step {step}: {', '.join(bad)} not finite (written as null in "
                     f"{os.path.join(out_dir, 'eval')})")
        self.history[step] = scalars
        return scalars

    def __call__(self, step: int, state) -> dict[str, float]:
        return self.evaluate(step, self.variables(state.base, state.trainable))
