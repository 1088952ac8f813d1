"""The train step: a pure function (state, batch, rng) -> (state, metrics).

Gradients are taken only with respect to the trainable tree (adapters and routers); the frozen base is
an ordinary input. Gradient accumulation is a ``lax.scan`` over micro-batches inside the step (one
optimizer update per step; the accumulated gradient is the mean of the micro-batch gradients). The
step's routing key is ``fold_in(rng, state.step)``, so a resumed run draws the same routing samples as an
uninterrupted one. ``compile_train_step`` jits with explicit shardings and a donated state and compiles
ahead of time, so the memory analysis is known before step 1; it traces the step inside
``parallel.logical.activation_sharding(mesh)``, so the decoder's activations follow the logical-axis rules.
Gradients come from ``objective.objective_value_and_grad``: ``jax.value_and_grad`` of the objective with all M
routing samples vmapped, or, with ``ObjectiveConfig.sample_chunk`` c > 0, M / c chunks of c samples in two
passes (one extra forward pass, activation memory of c samples), nested inside the accumulation scan.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from remix_jax.parallel.logical import activation_sharding
from remix_jax.training.objective import ObjectiveConfig, objective_value_and_grad
from remix_jax.training.train_state import TrainState

Array = jax.Array


def _split_micro(batch: dict, num_micro: int) -> dict:
    """[B, T] leaves -> [num_micro, B / num_micro, T]; micro-batch i takes rows i, i + num_micro, ...

    Strided rather than contiguous so every micro-batch stays spread over the data-parallel devices.
    """
    def split(x):
        b = x.shape[0]
        if b % num_micro:
            raise ValueError(f"batch size {b} is not divisible by grad_accum_steps={num_micro}")
        return jnp.swapaxes(x.reshape(b // num_micro, num_micro, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, obj_cfg: ObjectiveConfig,
                    schedules: dict[str, Callable] | None = None, grad_accum_steps: int = 1) -> Callable:
    """The pure step ``(state, batch, rng) -> (state, metrics)``.

    batch: dict of [B, T] arrays (tokens, loss_mask, segment_ids, positions); rng: the run's key.
    metrics: scalar arrays (loss, surrogate, grad_norm, lr/adapter, lr/router, tokens, routing/...).
    """
    # (trainable, base, batch, key) -> ((total, metrics), grads): jax.value_and_grad of adapter_objective
    # when obj_cfg.sample_chunk is 0, else the two-pass chunked computation (objective.py).
    grad_fn = functools.partial(objective_value_and_grad, apply_fn, cfg=obj_cfg)

    def step(state: TrainState, batch: dict, rng: Array):
        key = jax.random.fold_in(rng, state.step)
        if grad_accum_steps == 1:
            (total, metrics), grads = grad_fn(state.trainable, state.base, batch, key)
        else:
            micro = _split_micro(batch, grad_accum_steps)
            zeros = jax.tree.map(jnp.zeros_like, state.trainable)

            def body(acc, xs):
                i, mb = xs
                (tot, met), g = grad_fn(state.trainable, state.base, mb, jax.random.fold_in(key, i))
                acc = jax.tree.map(jnp.add, acc, g)
                return acc, (tot, met)

            grads, (tots, mets) = jax.lax.scan(
                body, zeros, (jnp.arange(grad_accum_steps), micro))
            grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
            total = jnp.mean(tots)
            metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), mets)
            metrics["num_sequences"] = metrics["num_sequences"] * grad_accum_steps
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        metrics = dict(metrics)
        metrics["objective"] = total
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["tokens"] = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)
        response = batch["loss_mask"] * (batch["segment_ids"] > 0)
        metrics["response_tokens"] = jnp.sum(response).astype(jnp.float32)
        if schedules:
            for g, sched in schedules.items():
                metrics[f"lr/{g}"] = jnp.asarray(sched(state.step), jnp.float32)
            metrics["lr"] = metrics["lr/adapter"]
        new_state = state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state)
        return new_state, metrics

    return step


def trace_train_step(step: Callable, state: TrainState, state_shardings, batch_shardings, abstract_batch: dict,
                     rng: Array):
    """jit with explicit shardings and a donated state, and trace (``jax.stages.Traced``; ``.lower()`` next).

    state: a concrete or abstract TrainState; abstract_batch: {name: ShapeDtypeStruct [B, T]} (global shapes).
    """
    rep = jax.sharding.NamedSharding(batch_shardings.mesh, jax.sharding.PartitionSpec())
    bsh = jax.tree.map(lambda _: batch_shardings, abstract_batch)
    jitted = jax.jit(step, in_shardings=(state_shardings, bsh, rep),
                     out_shardings=(state_shardings, rep), donate_argnums=(0,))
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, state_shardings)
    with activation_sharding(batch_shardings.mesh):  # activations on the mesh by the logical rules
        return jitted.trace(abstract_state, abstract_batch, rng)


def compile_train_step(step: Callable, state: TrainState, state_shardings, batch_shardings,
                       abstract_batch: dict, rng: Array, log: Callable[[str], None] | None = print):
    """``trace_train_step``, then lower and compile ahead of time.

    Returns the compiled executable, called as ``compiled(state, batch, rng)``. Prints the memory analysis.
    """
    compiled = trace_train_step(step, state, state_shardings, batch_shardings, abstract_batch, rng).lower().compile()
    if log is not None:
        log(memory_report(compiled))
    return compiled


MEMORY_FIELDS = ("argument", "output", "temp", "alias", "generated_code")


def compiled_memory(compiled) -> dict | None:
    """XLA's memory analysis of a compiled program, bytes per device: {argument, output, temp, alias,
    generated_code, total}, total = argument + output - alias (donated) + temp, what the program holds while it
    runs; None where the backend has no analysis."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if ma is None:
        return None
    mem = {f: int(getattr(ma, f"{f}_size_in_bytes", 0)) for f in MEMORY_FIELDS}
    mem["total"] = mem["argument"] + mem["output"] - mem["alias"] + mem["temp"]
    return mem


def memory_report(compiled) -> str:
    """One line with the compiled step's memory analysis (bytes per device), or that it is unavailable."""
    mem = compiled_memory(compiled)
    if mem is None:
        return "memory analysis unavailable on this backend"
    return "train step memory per device: " + " ".join(f"{f}={mem[f] / 2**30:.3f}GiB" for f in MEMORY_FIELDS)
