"""Generate a completion with a model, or with a training run's finetuned model, and print it.

    python -m remix_jax.generate --model=PATH --prompt="The capital of France is" [--max_new_tokens=32]
        [--chat] [--temperature=0.7 --top_p=0.9 --seed=0] [--dtype=float32|bfloat16]
    python -m remix_jax.generate --run=WORKDIR --prompt="Question: ...\\nAnswer:" [same options]

``--model``: a Hugging Face model directory or a .gguf file. ``--run``: a ``python -m remix_jax.main`` workdir:
its base model (``model.path`` of WORKDIR/config.json) with its adapters and routers, taken as
``python -m remix_jax.evaluate`` takes them (the final export when it is at least as new as the newest
checkpoint, else the newest checkpoint), and routed as in evaluation (deterministic top-k for ReMix): greedy
output is what the evaluator generates for the same prompt. The run's dtype is used unless --dtype is given,
and its eval.tokenizer where set (needed for random:SHAPE models).

Greedy decoding by default; generation stops at the tokenizer's end-of-sequence / end-of-turn tokens
(``remix_jax.training.completion`` does the work). Expected failures end in a short message and exit status 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import sys

from absl import app, flags

from remix_jax import cli

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined only when run as a program, so tests may import this module."""
    flags.DEFINE_string("model", None, "A Hugging Face model directory or a .gguf file.")
    flags.DEFINE_string("run", None, "A training run's workdir: its base model with its trained adapters.")
    flags.DEFINE_string("prompt", None, "The prompt text.", required=True)
    flags.DEFINE_integer("max_new_tokens", 64, "Maximum number of generated tokens.")
    flags.DEFINE_bool("chat", False, "Wrap the prompt as a user turn in the model's chat template.")
    flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 means greedy decoding.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with temperature > 0).")
    flags.DEFINE_integer("seed", 0, "Random seed for sampling.")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"],
                      "Parameter and compute dtype (default: float32, or the run's with --run).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if (FLAGS.model is None) == (FLAGS.run is None):
        raise app.UsageError("give one of --model=PATH (a model) or --run=WORKDIR (a training run)")
    from remix_jax import compile_cache
    from remix_jax.training.completion import run, run_finetuned  # jax is imported once the flags are parsed

    compile_cache.enable()  # programs compiled by an earlier process are read back (remix_jax/compile_cache.py)

    if FLAGS.run is not None:
        text = run_finetuned(FLAGS.run, FLAGS.prompt, FLAGS.max_new_tokens, FLAGS.chat, FLAGS.temperature,
                             FLAGS.top_p, FLAGS.seed, FLAGS.dtype,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    else:
        text = run(FLAGS.model, FLAGS.prompt, FLAGS.max_new_tokens, FLAGS.chat, FLAGS.temperature,
                   FLAGS.top_p, FLAGS.seed, FLAGS.dtype or "float32")
    print(text)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
