"""Generate a completion from a model directory or a .gguf file and print it.

    python -m remix_jax.generate --model=PATH --prompt="The capital of France is" [--max_new_tokens=32]
        [--chat] [--temperature=0.7 --top_p=0.9 --seed=0] [--dtype=float32|bfloat16]

Greedy decoding by default; generation stops at the tokenizer's end-of-sequence / end-of-turn tokens.
"""

from __future__ import annotations

import sys

import jax
from absl import app, flags

from remix_jax.evaluation.generation import GenerationConfig, generate
from remix_jax.models.config import ModelLoadError
from remix_jax.models.llama import Decoder
from remix_jax.models.loading import load_model, load_tokenizer
from remix_jax.models.tokenizer import encode_prompt, stop_token_ids

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Defined only when run as a program, so other modules and tests may import this one."""
    flags.DEFINE_string("model", None, "A Hugging Face model directory or a .gguf file.", required=True)
    flags.DEFINE_string("prompt", None, "The prompt text.", required=True)
    flags.DEFINE_integer("max_new_tokens", 64, "Maximum number of generated tokens.")
    flags.DEFINE_bool("chat", False, "Wrap the prompt as a user turn in the model's chat template.")
    flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 means greedy decoding.")
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (with temperature > 0).")
    flags.DEFINE_integer("seed", 0, "Random seed for sampling.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Parameter and compute dtype.")


def run(model_path: str, prompt: str, max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
        top_p: float = 1.0, seed: int = 0, dtype: str = "float32") -> str:
    """The decoded completion of ``prompt`` (special tokens skipped)."""
    cfg, params = load_model(model_path, dtype=dtype, param_dtype=dtype)
    tokenizer = load_tokenizer(model_path)
    ids = encode_prompt(tokenizer, prompt, chat=chat)
    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           stop_token_ids=stop_token_ids(tokenizer),
                           pad_id=tokenizer.pad_token_id or 0, max_batch=1)
    out = generate(Decoder(cfg), {"params": params}, [ids], gen, jax.random.key(seed))
    return tokenizer.decode(out.tokens[0], skip_special_tokens=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        text = run(FLAGS.model, FLAGS.prompt, FLAGS.max_new_tokens, FLAGS.chat, FLAGS.temperature,
                   FLAGS.top_p, FLAGS.seed, FLAGS.dtype)
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(text)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
