"""What ``python -m remix_jax.generate`` does: the completion of one prompt by a model, or by a training run's
finetuned model.

``run(model_path, prompt, ...)``: a Hugging Face model directory or a .gguf file. ``run_finetuned(workdir,
prompt, ...)``: a ``python -m remix_jax.main`` workdir: its base model (``model.path`` of WORKDIR/config.json,
``run_config``) with its adapters and routers, taken as ``python -m remix_jax.evaluate`` takes them
(``training.trained_model.load_trained_model``: the final export when it is at least as new as the newest
checkpoint, else the newest checkpoint), and routed as in evaluation (deterministic top-k for ReMix). The decoding
settings are the evaluator's (``evaluation.gen_runner.gen_config``), so greedy output is what the evaluator
generates for the same prompt; generation stops at the tokenizer's end-of-sequence / end-of-turn tokens.
Messages name the command's flags (--run, --model, --max_new_tokens, ...), as they are the user's to fix.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections

from remix_jax.cli import UserError
from remix_jax.evaluation.gen_runner import gen_config
from remix_jax.inference.generation import generate
from remix_jax.models.llama import Decoder
from remix_jax.models.loading import load_model, load_tokenizer
from remix_jax.models.tokenizer import encode_prompt
from remix_jax.run_config import model_path_problems
from remix_jax.rundir import read_json
from remix_jax.training.trained_model import load_trained_model


def _generation_config(tokenizer, max_new_tokens: int, temperature: float, top_p: float):
    """The evaluator's decoding settings (``evaluation.gen_runner.gen_config``) for one prompt."""
    try:
        return dataclasses.replace(gen_config(max_new_tokens, tokenizer, temperature, top_p), max_batch=1)
    except ValueError as e:
        raise UserError(f"{e} (--max_new_tokens / --temperature / --top_p)") from None


def _complete(model, variables: dict, tokenizer, prompt: str, max_new_tokens: int, chat: bool,
              temperature: float, top_p: float, seed: int) -> str:
    gen = _generation_config(tokenizer, max_new_tokens, temperature, top_p)
    ids = encode_prompt(tokenizer, prompt, chat=chat)
    out = generate(model, variables, [ids], gen, jax.random.key(seed))
    return tokenizer.decode(out.tokens[0], skip_special_tokens=True)


def run(model_path: str, prompt: str, max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
        top_p: float = 1.0, seed: int = 0, dtype: str = "float32") -> str:
    """The decoded completion of ``prompt`` by the model at ``model_path`` (special tokens skipped)."""
    cfg, params = load_model(model_path, dtype=dtype, param_dtype=dtype)
    tokenizer = load_tokenizer(model_path)
    return _complete(Decoder(cfg), {"params": params}, tokenizer, prompt, max_new_tokens, chat, temperature,
                     top_p, seed)


def run_config(workdir: str, dtype: str | None = None):
    """The ConfigDict of WORKDIR/config.json (``dtype``: overrides model.dtype and param_dtype)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isdir(workdir):
        raise UserError(f"--run={workdir}: no such folder")
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file; --run takes a folder written by python -m remix_jax.main",
                        "for a model directory or a .gguf file use --model")
    config = ml_collections.ConfigDict(read_json(path))
    if dtype:
        config.model.dtype = config.model.param_dtype = dtype
    return config


def run_finetuned(workdir: str, prompt: str, max_new_tokens: int = 64, chat: bool = False,
                  temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, dtype: str | None = None,
                  log=print) -> str:
    """The decoded completion of ``prompt`` by the run in ``workdir`` (base model + its newest adapters)."""
    config = run_config(workdir, dtype)
    problems = model_path_problems(config.model.path)
    if problems:
        raise UserError(f"{os.path.join(workdir, 'config.json')}: {problems[0]}",
                        "the run's base model must be where it was during training")
    loaded = load_trained_model(config, workdir, log=log, require_adapters=True)
    return _complete(loaded.model, loaded.variables, loaded.tokenizer, prompt, max_new_tokens, chat,
                     temperature, top_p, seed)
