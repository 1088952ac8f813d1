"""Does a router find a routing that is known to be right, and how fast? A controlled experiment.

The construction (every part seeded; ``build_task``):

- **Base**: a random decoder of a named shape (default "tiny" with 4 layers, vocabulary 256). Its first
  ``tasks x region`` tokens form one region per task, and a token of region t gets the task's direction added to
  its embedding: e_v + beta * rms(e) * sqrt(d) * u_t, with u_t orthonormal. A prompt token says its task.
- **Experts**: n = 2 x tasks rank-r LoRA experts on gate/up/down in every block, A from the adapters'
  initialisation, B ~ N(0, (b_std / sqrt(r))^2): every pair of experts changes the model differently.
- **Teacher**: base + experts + a linear block router (ReMix, deterministic top-2) fitted so that the tokens of
  task t select experts {2t, 2t+1}: block by block, least squares from the block's router input (under the
  teacher's routing of the blocks before it) to the centred one-hot task, times a gain, task t's column copied to
  experts 2t and 2t+1. The teacher's top-2 at every token and block is then the right routing, and a linear
  router (every learned router compared here) can represent it exactly.
- **Data**: P prompt tokens from one task's region, then R response tokens sampled from the teacher
  (temperature 1); the loss is on the response tokens. Held-out sequences are drawn the same way.
- **Students**: base + the teacher's experts, frozen (adapter learning rate 0) + a fresh router (the library's
  initialisation, its seed), trained by the project's train step (``training.train_step``) on the teacher's
  sequences: remix (RLOO over M samples), remix with ``baseline=none`` (REINFORCE), remix with
  ``credit=causal``, mixlora (with and without its load-balancing loss), softmax_dense. References, untrained:
  ``oracle`` (the teacher's router) and ``uniform_random``.

**Experts trained too** (``--adapter_lrs`` > 0): the students get fresh experts (the adapters' initialisation,
B = 0) trained with their router, as in finetuning, instead of the teacher's frozen experts. Two students have no
router and exist only there: ``uniform`` (k experts drawn uniformly per token in training and at inference, one
draw a step) and ``uniform_m`` (the loss averaged over ``--num_samples`` draws a step, as ReMix's): what a learned
routing is worth when the experts can adapt to any routing. Their held-out loss is the mean over 8 draws. Expert
labels are then arbitrary, so the routing is read by measures that do not depend on them (below): whether it
separates the tasks, and how many experts each token's output mixes.

Measured every ``--eval_every`` steps on the held-out sequences, deterministic routing: the response loss (the
oracle's is the floor: the data is the teacher's), the routing accuracy (the fraction of (response token,
block) decisions whose two largest router logits are the teacher's two experts; the same for prompt tokens), and
q_pair (the router's softmax probability on the teacher's pair, averaged over response decisions; what ReMix's
sampler draws from). ``gap`` = (loss - oracle) / (uniform - oracle): 1 is no better than random routing, 0 the
teacher; ``gap_base`` = (loss - oracle) / (base_only - oracle): 1 is no better than the base model without
experts. Label-free routing measures over response decisions: ``ess`` = 1 / sum_i q_i^2 of the router's softmax
over all n experts (n: uniform, 1: one expert), ``ess_applied`` the same of the weights the method applies,
normalised to sum 1 (ReMix's constant weight: k; MixLoRA's renormalised top-k softmax: 1 to k; a dense softmax:
its ``ess``), and ``task_mi`` = I(task; the top-2 set) / log(tasks) per block, the plug-in estimate from the counts
(0: the routing ignores the task, 1: it identifies the task; the estimate's positive bias is about
(tasks - 1)(pairs - 1) / (2 N) nats, under 0.01 here).

    python scripts/known_routing.py --methods=remix,mixlora --router_lrs=1e-2 --steps=300 --out=kr.jsonl

Output: JSON lines, one "setup" line (the construction and the references' loss), then one line per evaluation
of every run (method, router_lr, seed, step, loss, gap, accuracy, q_pair, ...).
``python scripts/known_routing.py --table=kr.jsonl[,more.jsonl]`` prints the summary table of run files.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables
from remix_jax.adapters.modules import TRACE
from remix_jax.models import llama
from remix_jax.models.model_config import named_config
from remix_jax.routing.diagnostics import dense_weights, effective_support_size
from remix_jax.routing.routers import route
from remix_jax.training import optimizer as opt_lib
from remix_jax.training.losses import token_cross_entropy
from remix_jax.training.objective import ObjectiveConfig
from remix_jax.training.train_state import create_train_state
from remix_jax.training.train_step import make_train_step

# method name -> (adapter method, adapter overrides, objective overrides)
METHODS = {
    "remix": ("remix", {}, {}),
    "remix_reinforce": ("remix", {}, {"baseline": "none"}),
    "remix_causal": ("remix", {}, {"credit": "causal"}),
    "mixlora": ("mixlora", {}, {}),
    "mixlora_nolb": ("mixlora", {"load_balance_coef": 0.0}, {}),
    "softmax_dense": ("softmax_dense", {}, {}),
    # No router (only with trained experts, --adapter_lrs > 0): k experts drawn uniformly per token in training and
    # at inference; "uniform" one draw a step, "uniform_m" the loss averaged over --num_samples draws, as ReMix's.
    "uniform": ("uniform_random", {}, {}),
    "uniform_m": ("uniform_random", {}, {}),
}
M_SAMPLES = ("remix", "remix_reinforce", "remix_causal", "uniform_m")  # students with --num_samples draws a step
NUM_EVAL_DRAWS = 8  # a uniform student's held-out loss: the mean over this many draws (as the reference's)


@dataclasses.dataclass(frozen=True)
class Setup:
    shape: str = "tiny"
    num_layers: int = 4
    tasks: int = 4
    region: int = 32  # prompt tokens per task region
    beta: float = 1.0  # task direction's size relative to a token embedding's norm
    rank: int = 4
    alpha: float = 16.0
    b_std: float = 1.0  # std of the experts' B entries, in units of 1 / sqrt(rank)
    gain: float = 20.0  # the teacher router's logit scale per unit of fitted task score
    prompt_len: int = 16
    response_len: int = 16
    num_train: int = 4096
    num_heldout: int = 512
    seed: int = 0


def adapter_config(s: Setup, method: str, **kw) -> AdapterConfig:
    return AdapterConfig(method=method, targets="ffn", num_experts=2 * s.tasks, top_k=2, rank=s.rank,
                         alpha=s.alpha, **kw)


def trace(model, variables: dict, tokens: jax.Array, key: jax.Array | None = None) -> tuple[jax.Array, dict]:
    """(logits [B, T, V], the block routers' trace {input, experts, logits} each [L, B, T, ...]); ``key``: the
    routing draw of a model that samples at inference (uniform_random)."""
    rngs = {} if key is None else {"rngs": {"routing": key}}
    (logits, _), mut = model.apply(variables, tokens, deterministic=True, mutable=[TRACE], **rngs)
    return logits, mut[TRACE]["layers"]["mlp"]


def fit_router(s: Setup, model, base: dict, adapter: dict, router: dict, tokens: np.ndarray,
               task: np.ndarray) -> dict:
    """The teacher's router: block by block, least squares from the block's router input to the centred one-hot
    task of each token, times ``s.gain``, task t's column given to experts 2t and 2t+1."""
    w = router["layers"]["mlp"]["weight"]  # [L, d, n]
    run = jax.jit(lambda v, t: trace(model, v, t)[1]["input"])
    target = np.eye(s.tasks, dtype=np.float64)[task] - 1.0 / s.tasks  # [N, tasks]
    for layer in range(w.shape[0]):
        v = {"params": base, "adapter": adapter, "router": {"layers": {"mlp": {"weight": w}}}}
        x = np.asarray(run(v, tokens)[layer], np.float64)  # [N, T, d]
        n_seq, t_len, d = x.shape
        xf = x.reshape(-1, d)
        yf = np.repeat(target, t_len, axis=0)
        coef = np.linalg.solve(xf.T @ xf + 1e-3 * np.eye(d), xf.T @ yf)  # [d, tasks]
        col = np.repeat(coef, 2, axis=1) * s.gain  # [d, n]: task t -> experts 2t, 2t+1
        w = w.at[layer].set(jnp.asarray(col, w.dtype))
    return {"layers": {"mlp": {"weight": w}}}


def prompts(s: Setup, rng: np.random.Generator, num: int) -> tuple[np.ndarray, np.ndarray]:
    task = rng.integers(0, s.tasks, num)
    tok = task[:, None] * s.region + rng.integers(0, s.region, (num, s.prompt_len))
    return tok.astype(np.int32), task


def sample_responses(model, variables: dict, prompt: np.ndarray, s: Setup, key) -> np.ndarray:
    """Append s.response_len tokens sampled from the model (temperature 1, deterministic routing)."""
    num = prompt.shape[0]
    total = s.prompt_len + s.response_len
    tokens = jnp.zeros((num, total), jnp.int32).at[:, :s.prompt_len].set(prompt)

    @jax.jit
    def next_token(variables, tokens, pos, key):
        (logits, _) = model.apply(variables, tokens, deterministic=True)
        last = jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False)
        return jax.random.categorical(key, last, axis=-1).astype(jnp.int32)

    for pos in range(s.prompt_len, total):
        key, sub = jax.random.split(key)
        tokens = tokens.at[:, pos].set(next_token(variables, tokens, pos, sub))
    return np.asarray(tokens)


def build_task(s: Setup) -> dict:
    """Base, experts, teacher router and the train / held-out sequences of the construction above."""
    rng = np.random.default_rng(s.seed)
    key = jax.random.key(s.seed)
    model_cfg = named_config(s.shape, num_layers=s.num_layers)
    base = llama.init_params(llama.Decoder(model_cfg), jax.random.fold_in(key, 0))["params"]
    emb = np.asarray(base["embed"]["embedding"], np.float64)
    d = emb.shape[1]
    if s.tasks * s.region > emb.shape[0]:
        raise ValueError(f"--tasks x --region = {s.tasks * s.region} exceeds the vocabulary ({emb.shape[0]})")
    u, _ = np.linalg.qr(rng.normal(size=(d, s.tasks)))  # orthonormal task directions [d, tasks]
    norm = np.sqrt(np.mean(np.sum(emb ** 2, axis=1)))
    for t in range(s.tasks):
        emb[t * s.region:(t + 1) * s.region] += s.beta * norm * u[:, t]
    base = {**base, "embed": {**base["embed"], "embedding": jnp.asarray(emb, jnp.float32)}}

    teacher = build_model(model_cfg, adapter_config(s, "remix"))
    init = init_adapter_variables(teacher, jax.random.fold_in(key, 1))
    flat = traverse_util.flatten_dict(init["adapter"])  # insertion order: the i-th lora_b gets key 100 + i
    for i, path in enumerate([p for p in flat if p[-1] == "lora_b"]):
        b = flat[path]
        flat[path] = jax.random.normal(jax.random.fold_in(key, 100 + i), b.shape, b.dtype) * (s.b_std / s.rank ** 0.5)
    adapter = traverse_util.unflatten_dict(flat)

    fit_prompt, fit_task = prompts(s, rng, 1024)
    fit_tokens = np.concatenate(
        [fit_prompt, rng.integers(0, model_cfg.vocab_size, (1024, s.response_len)).astype(np.int32)], axis=1)
    router = fit_router(s, teacher, base, adapter, init["router"], fit_tokens, fit_task)
    variables = {"params": base, "adapter": adapter, "router": router}

    train_prompt, train_task = prompts(s, rng, s.num_train)
    held_prompt, held_task = prompts(s, rng, s.num_heldout)
    train = sample_responses(teacher, variables, train_prompt, s, jax.random.fold_in(key, 2))
    heldout = sample_responses(teacher, variables, held_prompt, s, jax.random.fold_in(key, 3))
    _, tr = jax.jit(functools.partial(trace, teacher))(variables, heldout)
    pair = np.sort(np.asarray(tr["experts"]), axis=-1)  # [L, B, T, 2] the teacher's (right) experts
    return dict(model_cfg=model_cfg, base=base, adapter=adapter, router=router, train=train, train_task=train_task,
                heldout=heldout, heldout_task=held_task, pair=pair)


def response_mask(s: Setup, shape) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    mask[:, s.prompt_len:] = 1.0
    return mask


def applied_weights(z: np.ndarray, method: str, k: int = 2) -> np.ndarray:
    """The weights [..., n] that ``method``'s routing rule (``routing.routers.route``, deterministic) applies for
    router logits z [..., n], scattered over the n experts and normalised to sum 1."""
    out = route(method, jnp.asarray(z, jnp.float32), n=z.shape[-1], k=k, omega=1.0, key=None)
    w = np.asarray(dense_weights(out.experts, out.weights, z.shape[-1]), np.float64)
    return w / w.sum(-1, keepdims=True)


def task_information(chosen: np.ndarray, task: np.ndarray, num_tasks: int) -> float:
    """I(task; chosen set) / log(num_tasks), the plug-in estimate over decisions: chosen [N, k] (sorted expert
    ids), task [N] in 0..num_tasks-1. 0: the set chosen does not depend on the task; 1: it names the task
    (with tasks equally frequent)."""
    _, y = np.unique(chosen, axis=0, return_inverse=True)
    joint = np.zeros((num_tasks, int(y.max()) + 1))
    np.add.at(joint, (task, y.reshape(-1)), 1.0)
    p = joint / joint.sum()
    indep = p.sum(1, keepdims=True) * p.sum(0, keepdims=True)
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / indep[nz])) / np.log(num_tasks))


def evaluate(s: Setup, task: dict, model, trainable: dict, trace_fn=None, method: str = "remix") -> dict:
    """Held-out response loss, routing accuracy (response / prompt decisions), q_pair, and the label-free measures
    ess, ess_applied (``method``'s routing rule) and task_mi (per block and their mean).

    trace_fn: jax.jit of ``trace`` for this model (made here when not given). uniform_random draws its routing at
    inference too: its loss is the mean over NUM_EVAL_DRAWS draws (the routing measures are the first draw's)."""
    tokens = task["heldout"]
    trace_fn = trace_fn or jax.jit(functools.partial(trace, model))
    mask = response_mask(s, tokens.shape)
    draws = [jax.random.key(1000 + i) for i in range(NUM_EVAL_DRAWS)] if method == "uniform_random" else [None]
    losses, tr = [], None
    for key in draws:
        logits, draw_trace = trace_fn({"params": task["base"], **trainable}, tokens, key)
        ce = np.asarray(token_cross_entropy(logits, tokens))
        losses.append(float(np.sum(ce * mask) / np.sum(mask)))
        tr = draw_trace if tr is None else tr  # the first draw's routing
    out = {"loss": float(np.mean(losses))}
    pair = task["pair"]  # [L, B, T, 2]
    if "logits" in tr:
        z = np.asarray(tr["logits"], np.float64)  # [L, B, T, n]
        chosen = np.sort(np.argsort(-z, axis=-1, kind="stable")[..., :2], axis=-1)
        q = np.exp(z - z.max(-1, keepdims=True))
        q /= q.sum(-1, keepdims=True)
        q_pair = np.take_along_axis(q, pair, axis=-1).sum(-1)  # [L, B, T]
    else:  # uniform_random: the experts it drew
        chosen = np.sort(np.asarray(tr["experts"]), axis=-1)
        q_pair = np.full(pair.shape[:-1], 2.0 / (2 * s.tasks))
    right = np.all(chosen == pair, axis=-1)  # [L, B, T]
    resp = np.broadcast_to(mask.astype(bool), right.shape)
    out["accuracy"] = float(right[resp].mean())
    out["accuracy_prompt"] = float(right[:, :, :s.prompt_len].mean())
    out["accuracy_per_block"] = [float(right[i][resp[i]].mean()) for i in range(right.shape[0])]
    out["q_pair"] = float(q_pair[resp].mean())
    task_of = np.broadcast_to(task["heldout_task"][None, :, None], right.shape)
    out["task_mi_per_block"] = [task_information(chosen[i][resp[i]], task_of[i][resp[i]], s.tasks)
                                for i in range(right.shape[0])]
    out["task_mi"] = float(np.mean(out["task_mi_per_block"]))
    if "logits" in tr:
        out["logit_std"] = float(np.asarray(tr["logits"]).std(-1).mean())
        for name, w in (("ess", q), ("ess_applied", applied_weights(z, method))):
            out[name] = float(np.asarray(effective_support_size(jnp.asarray(w)))[resp].mean())
    else:  # uniform_random: k equal weights, no router softmax
        out["ess_applied"] = float(chosen.shape[-1])
    return out


def reference_losses(s: Setup, task: dict) -> dict:
    remix = build_model(task["model_cfg"], adapter_config(s, "remix"))
    trace_fn = jax.jit(functools.partial(trace, remix))  # one program for the oracle's and base_only's evaluations
    oracle = evaluate(s, task, remix, {"adapter": task["adapter"], "router": task["router"]}, trace_fn)
    tokens = task["heldout"]
    mask = response_mask(s, tokens.shape)

    def response_loss(logits) -> float:
        ce = np.asarray(token_cross_entropy(logits, tokens))
        return float(np.sum(ce * mask) / np.sum(mask))

    uni_model = build_model(task["model_cfg"], adapter_config(s, "uniform_random"))
    uniform = jax.jit(lambda v, t, k: uni_model.apply(v, t, deterministic=True, rngs={"routing": k})[0])
    variables = {"params": task["base"], "adapter": task["adapter"]}
    # uniform_random draws at inference too: average NUM_EVAL_DRAWS draws (the keys evaluate uses)
    losses = [response_loss(uniform(variables, tokens, jax.random.key(1000 + i))) for i in range(NUM_EVAL_DRAWS)]
    # What one right block is worth on its own: block b routed as the teacher routes, every other block by ReMix's
    # sampler at a zero router (uniform draws), the loss averaged over 4 draws. With additive effects each block
    # recovers about 1/L of uniform routing's excess loss; much less means a router that samples learns from
    # little signal until several blocks are right together.
    w = task["router"]["layers"]["mlp"]["weight"]
    # first_blocks_right[b]: blocks 0..b routed as the teacher routes, the rest uniformly (what each further
    # block adds once the ones before it are right).
    sample = jax.jit(lambda v, t, k: remix.apply(v, t, deterministic=False, rngs={"routing": k})[0])

    def loss_with_right_blocks(blocks) -> float:
        # x1000: the sampler then draws the teacher's top-2 at those blocks (Gumbel noise is O(1)).
        right = jnp.zeros_like(w)
        for b in blocks:
            right = right.at[b].set(1000.0 * w[b])
        v = {**variables, "router": {"layers": {"mlp": {"weight": right}}}}
        return float(np.mean([response_loss(sample(v, tokens, jax.random.key(2000 + i))) for i in range(4)]))

    one_right = [loss_with_right_blocks([b]) for b in range(w.shape[0])]
    first_right = [loss_with_right_blocks(range(b + 1)) for b in range(w.shape[0])]
    zero_b = jax.tree.map(jnp.zeros_like, task["adapter"])
    base_only = evaluate(s, task, remix, {"adapter": zero_b, "router": task["router"]}, trace_fn)
    return {"oracle": oracle["loss"], "uniform_random": float(np.mean(losses)), "base_only": base_only["loss"],
            "oracle_task_pair": _task_pair_rate(s, task), "one_block_right": one_right,
            "first_blocks_right": first_right}


def _task_pair_rate(s: Setup, task: dict) -> float:
    """How often the teacher's pair is its token's task pair {2t, 2t+1} (response decisions)."""
    want = np.stack([2 * task["heldout_task"], 2 * task["heldout_task"] + 1], -1)  # [B, 2]
    hit = np.all(task["pair"] == want[None, :, None, :], axis=-1)  # [L, B, T]
    return float(hit[:, :, s.prompt_len:].mean())


def omega_applies(omega: str, method: str, adapter_lr: float) -> bool:
    """Whether a student of ``method`` at ``adapter_lr`` may take the constant weight ``omega``: any for "lora"
    (the teacher's), else only a ReMix student with trained experts (which can grow to match a smaller weight)."""
    return omega == "lora" or (METHODS[method][0] == "remix" and adapter_lr > 0)


def train_run(s: Setup, task: dict, refs: dict, method: str, router_lr: float, seed: int, steps: int, batch: int,
              num_samples: int, eval_every: int, router_init_std: float | None, emit, adapter_lr: float = 0.0,
              omega: str = "lora") -> None:
    """One student: a fresh router with the teacher's experts frozen (adapter_lr 0), or with fresh experts
    (B = 0) trained at adapter_lr alongside it. omega: a ReMix student's constant weight ("paper": 2/(k r),
    8 times smaller than the teacher's alpha/(k r) here; only with trained experts, which can grow to match)."""
    adapter_method, adapter_kw, obj_kw = METHODS[method]
    if adapter_method == "uniform_random" and not adapter_lr > 0:
        raise ValueError(f"{method} has no router: it is a student only with trained experts (--adapter_lrs > 0); "
                         "with the teacher's frozen experts it is the uniform_random reference")
    if not omega_applies(omega, method, adapter_lr):
        raise ValueError(f"omega={omega!r} is for ReMix students with trained experts (--adapter_lrs > 0); "
                         f"{method} at adapter rate {adapter_lr:g} keeps the teacher's weight")
    acfg = adapter_config(s, adapter_method, router_init_std=router_init_std,
                          **({"omega": omega} if adapter_method == "remix" else {}), **adapter_kw)
    model = build_model(task["model_cfg"], acfg)
    fresh = init_adapter_variables(model, jax.random.fold_in(jax.random.key(seed), 7))
    trainable = {"adapter": fresh["adapter"] if adapter_lr > 0 else task["adapter"], "router": fresh["router"]}
    m = num_samples if method in M_SAMPLES else 1
    obj = ObjectiveConfig(num_samples=m, sampling_router=adapter_method == "remix", aux_loss_weight=1.0,
                          loss_chunk_tokens=0, **obj_kw)
    tx, schedules = opt_lib.make_optimizer(opt_lib.OptimizerConfig(
        adapter_lr=adapter_lr, router_lr=router_lr, warmup_steps=min(10, steps // 10), total_steps=steps))
    step_fn = jax.jit(make_train_step(model.apply, tx, obj, schedules), donate_argnums=(0,))
    # The step donates its state: the task's arrays are copied in, never handed over.
    state = create_train_state(jax.tree.map(jnp.copy, task["base"]), jax.tree.map(jnp.copy, trainable), tx)
    trace_fn = jax.jit(functools.partial(trace, model))
    data = task["train"]
    order = np.random.default_rng(seed).permutation(len(data))
    mask = response_mask(s, (batch, data.shape[1]))
    seg = np.ones((batch, data.shape[1]), np.int32)
    pos = np.broadcast_to(np.arange(data.shape[1], dtype=np.int32), (batch, data.shape[1])).copy()
    key = jax.random.key(10_000 + seed)
    run = {"method": method, "router_lr": router_lr, "adapter_lr": adapter_lr, "seed": seed, "num_samples": m,
           "router_init_std": router_init_std, "omega": acfg.omega_value() if adapter_method == "remix" else None}
    t0 = time.perf_counter()
    for step in range(steps + 1):
        if step % eval_every == 0 or step == steps:
            adapter = state.trainable["adapter"] if adapter_lr > 0 else task["adapter"]  # frozen: the teacher's
            ev = evaluate(s, task, model, {"adapter": adapter, "router": state.trainable["router"]}, trace_fn,
                          adapter_method)
            gap = (ev["loss"] - refs["oracle"]) / (refs["uniform_random"] - refs["oracle"])
            gap_base = (ev["loss"] - refs["oracle"]) / (refs["base_only"] - refs["oracle"])
            emit({"kind": "eval", **run, "step": step, **ev, "gap": gap, "gap_base": gap_base,
                  "wall_s": round(time.perf_counter() - t0, 2)})
        if step == steps:
            break
        i = (step * batch) % len(data)
        rows = order[np.arange(i, i + batch) % len(data)]
        b = {"tokens": data[rows], "loss_mask": mask, "segment_ids": seg, "positions": pos}
        state, metrics = step_fn(state, b, key)
        if not np.isfinite(float(metrics["objective"])):
            raise FloatingPointError(f"{method} lr {router_lr} seed {seed}: objective is not finite at step {step}")


def _stat(values: list[float]) -> str:
    mean = float(np.mean(values))
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"


def summarize(rows: list[dict], threshold: float = 0.9) -> str:
    """Markdown tables of a run file's evaluations. Runs with the teacher's experts frozen: per (method,
    router_lr, num_samples, router_init_std), over seeds, the last evaluation's gap, accuracy and q_pair (mean
    and, with several seeds, min-max) and the first step whose accuracy reached ``threshold`` (seeds that never
    did are counted). Runs that trained their experts (adapter_lr > 0; a second table): per (method, router_lr,
    adapter_lr, num_samples, router_init_std), the last evaluation's gap_base, ess, ess_applied and task_mi."""
    frozen: dict[tuple, dict[int, list[dict]]] = {}
    trained: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        if r.get("kind") != "eval":
            continue
        a_lr = r.get("adapter_lr", 0.0)
        if a_lr > 0:
            key = (r["method"], r["router_lr"], a_lr, r["num_samples"], r["router_init_std"], r.get("omega"))
            trained.setdefault(key, {}).setdefault(r["seed"], []).append(r)
        else:
            key = (r["method"], r["router_lr"], r["num_samples"], r["router_init_std"])
            frozen.setdefault(key, {}).setdefault(r["seed"], []).append(r)
    tables = []
    if frozen:
        tables.append(_frozen_table(frozen, threshold))
    if trained:
        tables.append(_trained_table(trained))
    return "\n\n".join(tables)


def _stat_of(rows: list[dict], name: str) -> str:
    """_stat of rows' ``name``, or "-" where the method has none (a student without a router has no softmax)."""
    return _stat([r[name] for r in rows]) if all(name in r for r in rows) else "-"


def _last(seeds: dict[int, list[dict]]) -> list[dict]:
    return [sorted(runs, key=lambda r: r["step"])[-1] for runs in seeds.values()]


def _trained_table(groups: dict) -> str:
    lines = ["| method | router lr | adapter lr | M | init std | omega | seeds | steps | gap_base | ess | "
             "ess_applied | task_mi |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (method, lr, a_lr, m, init, omega), seeds in groups.items():
        last = _last(seeds)
        lines.append(f"| {method} | {lr:g} | {a_lr:g} | {m} | {'default' if init is None else f'{init:g}'} | "
                     f"{'-' if omega is None else f'{omega:g}'} | "
                     f"{len(last)} | {last[0]['step']} | {_stat([r['gap_base'] for r in last])} | "
                     f"{_stat_of(last, 'ess')} | {_stat_of(last, 'ess_applied')} | "
                     f"{_stat([r['task_mi'] for r in last])} |")
    return "\n".join(lines)


def _frozen_table(groups: dict, threshold: float) -> str:
    lines = ["| method | router lr | M | init std | seeds | steps | gap | accuracy | q_pair | "
             f"steps to {threshold:g} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, lr, m, init), seeds in groups.items():
        last = _last(seeds)
        reach = []
        for runs in seeds.values():
            hit = [r["step"] for r in sorted(runs, key=lambda r: r["step"]) if r["accuracy"] >= threshold]
            reach.append(hit[0] if hit else None)
        done = [x for x in reach if x is not None]
        reach_s = (f"{np.mean(done):.0f}" if done else "-") + ("" if len(done) == len(reach)
                                                                 else f" ({len(reach) - len(done)} never)")
        lines.append(f"| {method} | {lr:g} | {m} | {'default' if init is None else f'{init:g}'} | {len(last)} | "
                     f"{last[0]['step']} | {_stat([r['gap'] for r in last])} | "
                     f"{_stat([r['accuracy'] for r in last])} | {_stat([r['q_pair'] for r in last])} | {reach_s} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Setup):
        ap.add_argument(f"--{f.name}", type=type(f.default), default=f.default)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--router_lrs", default="1e-3,1e-2,1e-1")
    ap.add_argument("--runs", default="", help="METHOD:ROUTER_LR,... (each method at its own rate; replaces "
                    "--methods and --router_lrs)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--num_samples", type=int, default=4, help="M for remix")
    ap.add_argument("--router_init_std", type=float, default=None)
    ap.add_argument("--omega", default="lora", choices=["lora", "rslora", "paper"],
                    help="ReMix students' constant weight (AdapterConfig.omega); other than 'lora' only with "
                    "--adapter_lrs > 0")
    ap.add_argument("--adapter_lrs", default="0", help="comma list; 0: the teacher's experts, frozen; > 0: fresh "
                    "experts (B = 0) trained at that rate with the router (every run at each rate)")
    ap.add_argument("--eval_every", type=int, default=25)
    ap.add_argument("--out", help="the JSON lines to write (never overwritten)")
    ap.add_argument("--table", default="", help="print the summary table of these run files (comma list) and exit; "
                    "with --runs, only those runs")
    a = ap.parse_args(argv)
    if a.table:
        rows = []
        for path in a.table.split(","):
            with open(path) as f:
                rows += [json.loads(line) for line in f if line.strip()]
        if a.runs:  # only these (method, router_lr) pairs
            keep = {(m, float(lr)) for m, lr in (item.split(":") for item in a.runs.split(",") if item)}
            rows = [r for r in rows if r.get("kind") != "eval" or (r["method"], r["router_lr"]) in keep]
        print(summarize(rows))
        return
    if not a.out:
        raise SystemExit("--out is required (or --table to summarise run files)")
    if a.runs:
        pairs = [item.split(":") for item in a.runs.split(",") if item]
        if any(len(p) != 2 for p in pairs):
            raise SystemExit(f"--runs: {a.runs!r} is not METHOD:ROUTER_LR,...")
        runs = [(m, float(lr)) for m, lr in pairs]
    else:
        runs = [(m, float(lr)) for m in a.methods.split(",") if m for lr in a.router_lrs.split(",")]
    try:
        adapter_lrs = [float(x) for x in a.adapter_lrs.split(",") if x]
    except ValueError:
        raise SystemExit(f"--adapter_lrs: {a.adapter_lrs!r} is not a comma list of numbers") from None
    if not adapter_lrs or any(x < 0 for x in adapter_lrs):
        raise SystemExit(f"--adapter_lrs: {a.adapter_lrs!r}: give rates >= 0")
    unknown = sorted({m for m, _ in runs if m not in METHODS})
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {', '.join(METHODS)}")
    if not all(omega_applies(a.omega, m, x) for m, _ in runs for x in adapter_lrs):
        raise SystemExit(f"--omega={a.omega}: only for ReMix students with trained experts (--adapter_lrs > 0)")
    no_router = sorted({m for m, _ in runs if METHODS[m][0] == "uniform_random"})
    if no_router and not all(x > 0 for x in adapter_lrs):
        raise SystemExit(f"{', '.join(no_router)}: no router, so a student only with trained experts "
                         "(--adapter_lrs > 0); with the teacher's frozen experts it is the uniform_random reference")
    setup = Setup(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Setup)})
    if os.path.exists(a.out):
        raise SystemExit(f"{a.out} exists; choose another --out (results are never overwritten)")
    t0 = time.perf_counter()
    task = build_task(setup)
    refs = reference_losses(setup, task)
    with open(a.out, "w") as f:
        def emit(row):
            f.write(json.dumps(row) + "\n")
            f.flush()
            if row.get("kind") == "eval":
                print(f"{row['method']:>16} lr {row['router_lr']:g}/{row['adapter_lr']:g} seed {row['seed']} "
                      f"step {row['step']:>4}: loss {row['loss']:.4f} gap {row['gap']:.3f} "
                      f"gap_base {row['gap_base']:.3f} acc {row['accuracy']:.3f} q_pair {row['q_pair']:.3f} "
                      f"ess {row.get('ess', float('nan')):.2f}/{row['ess_applied']:.2f} "
                      f"task_mi {row['task_mi']:.3f}",
                      file=sys.stderr, flush=True)

        emit({"kind": "setup", **dataclasses.asdict(setup), **{f"ref_{k}": v for k, v in refs.items()},
              "jax": jax.__version__, "build_s": round(time.perf_counter() - t0, 1), "argv": sys.argv[1:]})
        print(f"references: {refs}", file=sys.stderr, flush=True)
        for seed in [int(x) for x in a.seeds.split(",")]:
            for adapter_lr in adapter_lrs:
                for method, lr in runs:
                    train_run(setup, task, refs, method, lr, seed, a.steps, a.batch, a.num_samples, a.eval_every,
                              a.router_init_std, emit, adapter_lr, a.omega)


if __name__ == "__main__":
    main()
