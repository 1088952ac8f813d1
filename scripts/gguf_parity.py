"""A GGUF file loaded by remix_jax against transformers' own GGUF loading: logits, greedy text, tokenizer.

transformers dequantises the file with the ``gguf`` package into a PyTorch model (float32, CPU); we load it with
``remix_jax.models.gguf_io``. Prints one JSON object: per prompt the max |logit difference| over all positions,
the fraction of positions with the same argmax, and whether the greedy continuations agree token for token; and
per tokenizer string whether our ids equal transformers' ids (plain text and chat-template renderings).

    python scripts/gguf_parity.py --gguf=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --new_tokens=32
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from remix_jax.inference.generation import GenerationConfig, generate
from remix_jax.models.gguf_io import load_gguf
from remix_jax.models.llama import Decoder
from remix_jax.models.tokenizer import encode_prompt, load_tokenizer, stop_token_ids

PROMPTS = (
    ("text", "The capital of France is"),
    ("code", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("chat", "Write a Python function that checks whether a string is a palindrome."),
    ("math", "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
             "How many clips did Natalia sell altogether in April and May?"),
)
TOKENIZER_STRINGS = (
    "Hello world", "  leading spaces\n\n\ttabs 12345 3.14159 -0.5e10", "It's we'll THEY'RE ÉCOLE naïve façade",
    "héllo wörld ñ 日本語のテキスト 🙂👍🏽 Ελληνικά русский", "def f(x):\n    return x ** 2  # square\n",
    "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>", "数学: 3×4=12, √2≈1.414", "\r\n\r\n  \t x", "",
)


def _tokenizer_report(ours, ref) -> dict:
    rows = {}
    for s in TOKENIZER_STRINGS:
        a, b = ours.encode(s), ref.encode(s)
        rows[repr(s)[:40]] = {"equal": a == b, "n_tokens": len(a), "round_trip": ours.decode(a) == s}
    for system in (None, "You are a careful assistant."):
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "Hi"}]
        a = ours.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        b = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids_a = encode_prompt(ours, "Hi", chat=True, system=system)
        ids_b = list(ref.encode(b, add_special_tokens=False))
        rows[f"chat(system={system is not None})"] = {"text_equal": a == b, "ids_equal": ids_a == ids_b,
                                                      "n_tokens": len(ids_a)}
    special = {k: (getattr(ours, k), getattr(ref, k)) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return {"strings": rows, "all_equal": all(all(v for k, v in r.items() if k != "n_tokens" and k != "round_trip")
                                               for r in rows.values()),
            "special_ids(ours, transformers)": special, "stop_token_ids": list(stop_token_ids(ours))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", required=True)
    p.add_argument("--new_tokens", type=int, default=32)
    args = p.parse_args()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.abspath(args.gguf)
    d, name = os.path.dirname(path), os.path.basename(path)
    t0 = time.time()
    cfg, params = load_gguf(path)
    tok = load_tokenizer(path)
    t_ours = time.time() - t0
    t0 = time.time()
    ref = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32).eval()
    ref_tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    t_ref = time.time() - t0
    model = Decoder(cfg)
    stops = stop_token_ids(tok)
    out = {"gguf": name, "config": {k: getattr(cfg, k) for k in (
        "num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim", "rope_theta",
        "rms_norm_eps", "tie_embeddings", "attention_bias", "vocab_size")},
        "hf_config": {k: getattr(ref.config, k, None) for k in ("rms_norm_eps", "tie_word_embeddings",
                                                                 "rope_parameters", "vocab_size")},
        "load_s": {"ours": round(t_ours, 1), "transformers": round(t_ref, 1)}, "prompts": {}}
    for kind, text in PROMPTS:
        ids = encode_prompt(tok, text, chat=kind == "chat")
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0].numpy()
            hf_gen = ref.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  max_new_tokens=args.new_tokens, do_sample=False,
                                  eos_token_id=list(stops), pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
        got = np.asarray(model.apply({"params": params}, jnp.asarray([ids]))[0][0])
        gen = generate(model, {"params": params}, [ids],
                       GenerationConfig(max_new_tokens=args.new_tokens, stop_token_ids=stops,
                                        pad_id=tok.pad_token_id or 0, max_batch=1))
        ours_gen = gen.tokens[0]
        hf_gen = hf_gen[:next((i for i, t in enumerate(hf_gen) if t in stops), len(hf_gen))]  # cut like ours
        first_diff = next((i for i, (a, b) in enumerate(zip(ours_gen, hf_gen, strict=False)) if a != b), None)
        out["prompts"][kind] = {
            "n_prompt_tokens": len(ids),
            "max_abs_logit_diff": float(np.abs(got - want).max()),
            "max_abs_logit": float(np.abs(want).max()),
            "argmax_agreement": float((got.argmax(-1) == want.argmax(-1)).mean()),
            "greedy_equal": ours_gen == hf_gen,
            "greedy_first_difference": first_diff,
            "n_new_tokens": [len(ours_gen), len(hf_gen)],
            "ours_text": tok.decode(ours_gen, skip_special_tokens=True),
        }
        print(kind, json.dumps(out["prompts"][kind]), flush=True)
    out["tokenizer"] = _tokenizer_report(tok, ref_tok)
    out["jax"], out["backend"] = jax.__version__, jax.default_backend()
    print(json.dumps(out, indent=1, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()
