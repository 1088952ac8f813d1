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

Greedy decoding by default; generation stops at the tokenizer's end-of-sequence / end-of-turn tokens. Expected
failures end in a short message and exit status 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import os

from absl import app, flags

from remix_jax.cli import UserError

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined only when run as a program, so other modules and tests may import this one."""
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


def _generation_config(tokenizer, max_new_tokens: int, temperature: float, top_p: float):
    """The evaluator's decoding settings (``evaluation.gen_runner.gen_config``) for one prompt."""
    import dataclasses

    from remix_jax.evaluation.gen_runner import gen_config

    try:
        return dataclasses.replace(gen_config(max_new_tokens, tokenizer, temperature, top_p), max_batch=1)
    except ValueError as e:
        raise UserError(f"{e} (--max_new_tokens / --temperature / --top_p)") from None


def _complete(model, variables: dict, tokenizer, prompt: str, max_new_tokens: int, chat: bool,
              temperature: float, top_p: float, seed: int) -> str:
    import jax

    from remix_jax.inference.generation import generate
    from remix_jax.models.tokenizer import encode_prompt

    gen = _generation_config(tokenizer, max_new_tokens, temperature, top_p)
    ids = encode_prompt(tokenizer, prompt, chat=chat)
    out = generate(model, variables, [ids], gen, jax.random.key(seed))
    return tokenizer.decode(out.tokens[0], skip_special_tokens=True)


def run(model_path: str, prompt: str, max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
        top_p: float = 1.0, seed: int = 0, dtype: str = "float32") -> str:
    """The decoded completion of ``prompt`` by the model at ``model_path`` (special tokens skipped)."""
    from remix_jax.models.llama import Decoder
    from remix_jax.models.loading import load_model, load_tokenizer

    cfg, params = load_model(model_path, dtype=dtype, param_dtype=dtype)
    tokenizer = load_tokenizer(model_path)
    return _complete(Decoder(cfg), {"params": params}, tokenizer, prompt, max_new_tokens, chat, temperature,
                     top_p, seed)


def run_config(workdir: str, dtype: str | None = None):
    """The ConfigDict of WORKDIR/config.json (``dtype``: overrides model.dtype and param_dtype)."""
    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise UserError(f"--run={workdir}: no such folder")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; --run takes a folder written by python -m remix_jax.main",
                        "for a model directory or a .gguf file use --model")
    from remix_jax.rundir import read_json

    config = ml_collections.ConfigDict(read_json(path))
    if dtype:
        config.model.dtype = config.model.param_dtype = dtype
    return config


def run_finetuned(workdir: str, prompt: str, max_new_tokens: int = 64, chat: bool = False,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, dtype: str | None = None,
                  log=print) -> str:
    """The decoded completion of ``prompt`` by the run in ``workdir`` (base model + its newest adapters)."""
    from remix_jax.run_config import model_path_problems
    from remix_jax.training.trained_model import load_trained_model

    config = run_config(workdir, dtype)
    problems = model_path_problems(config.model.path)
    if problems:
        raise UserError(f"{os.path.join(workdir, 'config.json')}: {problems[0]}",
                        "the run's base model must be where it was during training")
    loaded = load_trained_model(config, workdir, log=log, require_adapters=True)
    return _complete(loaded.model, loaded.variables, loaded.tokenizer, prompt, max_new_tokens, chat,
                     temperature, top_p, seed)


def main(argv):
    import sys

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if (FLAGS.model is None) == (FLAGS.run is None):
        raise app.UsageError("give one of --model=PATH (a model) or --run=WORKDIR (a training run)")
    if FLAGS.run is not None:
        text = run_finetuned(FLAGS.run, FLAGS.prompt, FLAGS.max_new_tokens, FLAGS.chat, FLAGS.temperature,
                             FLAGS.top_p, FLAGS.seed, FLAGS.dtype,
                             log=lambda line: print(line, file=sys.stderr, flush=True))
    else:
        text = run(FLAGS.model, FLAGS.prompt, FLAGS.max_new_tokens, FLAGS.chat, FLAGS.temperature,
                   FLAGS.top_p, FLAGS.seed, FLAGS.dtype or "float32")
    print(text)


if __name__ == "__main__":
    from remix_jax import cli

    _define_flags()
    cli.run(main)
