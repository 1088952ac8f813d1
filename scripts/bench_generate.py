"""Generation throughput (tokens/s) of remix_jax's batched KV-cache decoding, with and without a remix
adapter, optionally against transformers' ``generate`` on the same weights, prompt and batch sizes.

Greedy decoding of a 43-token GSM8K-like prompt, 128 new tokens (no stop token, so every row generates
exactly that many), bf16 parameters and compute. One JSON line per configuration.

    # the real SmolLM2-135M-Instruct (GGUF file), ours with/without a remix adapter, and transformers:
    python scripts/bench_generate.py --model=PATH/SmolLM2-135M-Instruct.Q4_1.gguf --peer=hf
    # a named random shape (same speed as the real weights of that shape), CPU smoke test:
    python scripts/bench_generate.py --shape=tiny --batch_sizes=1,4 --new_tokens=8 --dtype=float32

tokens/s counts generated tokens only (batch x new_tokens / wall time of one whole ``generate`` call,
prefill included, after a warm-up call that compiles). The remix adapter is random with nonzero B
(8 experts, top-2, rank 8, on gate/up/down) so the routing path and the expert matmuls really run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from remix_jax.inference.generation import GenerationConfig, generate  # noqa: E402
from remix_jax.models.llama import Decoder, init_params  # noqa: E402
from remix_jax.models.model_config import named_config  # noqa: E402

PROMPT_LEN = 43
GSM8K_PROMPT = (
    "Question: Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?\nAnswer: Let's think step "
    "by step."
)


def prompt_ids(tokenizer, vocab_size: int, length: int = PROMPT_LEN) -> list[int]:
    """A GSM8K-like prompt of exactly ``length`` tokens (random ids when there is no tokenizer)."""
    if tokenizer is None:
        return np.random.default_rng(0).integers(1, vocab_size, length).tolist()
    ids = list(tokenizer.encode(GSM8K_PROMPT, add_special_tokens=False))
    while len(ids) < length:
        ids = ids + ids
    return ids[-length:]


def load(model: str, shape: str, dtype: str):
    """(ModelConfig, params, tokenizer or None)."""
    if model:
        from remix_jax.models.loading import load_model, load_tokenizer

        cfg, params = load_model(model, dtype=dtype, param_dtype=dtype)
        return cfg, params, load_tokenizer(model)
    cfg = named_config(shape, dtype=dtype, param_dtype=dtype)
    params = jax.jit(lambda k: init_params(Decoder(cfg), k))(jax.random.key(0))["params"]
    return cfg, params, None


def remix_variables(cfg, params, experts: int = 8, top_k: int = 2, rank: int = 8):
    """(adapted Decoder, variables) with a random remix adapter whose B factors are nonzero."""
    from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables

    acfg = AdapterConfig(
        method="remix", targets="ffn", num_experts=experts, top_k=top_k, rank=rank, alpha=16.0
    )
    model = build_model(cfg, acfg)
    extra = init_adapter_variables(model, jax.random.key(1))
    keys = iter(jax.random.split(jax.random.key(2), 1000))

    def nonzero(path, x):
        name = str(getattr(path[-1], "key", ""))
        return 0.02 * jax.random.normal(next(keys), x.shape, x.dtype) if name == "lora_b" else x

    extra["adapter"] = jax.tree_util.tree_map_with_path(nonzero, extra["adapter"])
    return model, {"params": params, **extra}


def time_ours(model, variables, prompt: list[int], batch: int, new_tokens: int, repeats: int,
              profile: int = 0, fuse: bool = True, fold_norms: bool = True, remix_kernels: str = "auto") -> dict:
    gen = GenerationConfig(max_new_tokens=new_tokens, temperature=0.0, stop_token_ids=(), max_batch=batch,
                           fuse_projections=fuse, scan_unroll=model.config.scan_unroll, fold_norms=fold_norms,
                           remix_kernels=remix_kernels)
    prompts = [prompt] * batch
    t0 = time.perf_counter()
    out = generate(model, variables, prompts, gen)  # compiles
    compile_s = time.perf_counter() - t0
    assert all(len(t) == new_tokens for t in out.tokens), "every row must generate new_tokens tokens"
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate(model, variables, prompts, gen)
        times.append(time.perf_counter() - t0)
    best = min(times)
    row = {
        "seconds": round(best, 5),
        "tokens_per_s": round(batch * new_tokens / best, 1),
        "first_call_s": round(compile_s, 2),
        "first_tokens": out.tokens[0][:8],
    }
    if profile:
        from profile_ops import format_report, profile_calls

        report = profile_calls(lambda: generate(model, variables, prompts, gen), calls=profile, top=40)
        print(f"--- profile batch {batch}\n{format_report(report)}", file=sys.stderr, flush=True)
        row["profile"] = report
    return row


def hf_model(cfg, params, dtype: str):
    """A transformers model on the GPU with the same weights (written with save_hf_checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM

    from remix_jax.models.hf_io import save_hf_checkpoint

    with tempfile.TemporaryDirectory() as d:
        save_hf_checkpoint(d, cfg, jax.tree.map(lambda x: np.asarray(x, np.float32), params))
        model = AutoModelForCausalLM.from_pretrained(d, dtype=getattr(torch, dtype))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(dev).eval(), dev


def time_hf(model, dev: str, prompt: list[int], batch: int, new_tokens: int, repeats: int) -> dict:
    import torch

    ids = torch.tensor([prompt] * batch, device=dev)
    mask = torch.ones_like(ids)
    kw = dict(
        attention_mask=mask,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
    )

    def run():
        with torch.inference_mode():
            out = model.generate(ids, **kw)
        if dev == "cuda":
            torch.cuda.synchronize()
        return out

    out = run()
    assert out.shape[1] - ids.shape[1] == new_tokens, out.shape
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {
        "seconds": round(best, 5),
        "tokens_per_s": round(batch * new_tokens / best, 1),
        "first_tokens": out[0, ids.shape[1] : ids.shape[1] + 8].tolist(),
    }


def flags(text: str) -> list[bool]:
    """'1,0' -> [True, False]."""
    return [f.strip() not in ("0", "false", "False") for f in text.split(",") if f.strip()]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="", help="a .gguf file or Hugging Face directory (else --shape)")
    p.add_argument("--shape", default="smollm2-135m", help="named random shape when --model is not given")
    p.add_argument("--batch_sizes", default="1,16,128")
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--prompt_len", type=int, default=PROMPT_LEN)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--adapters", default="none,remix", help="comma list of: none, remix")
    p.add_argument("--peer", default="", help="'hf': also time transformers' generate (torch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--unroll", default="2",
                   help="comma list of layers per iteration of the layer loop while decoding (GenerationConfig."
                        "scan_unroll; 1 = rolled, 2 = the default)")
    p.add_argument("--fuse", default="1",
                   help="comma list of 1/0: fused q/k/v and gate/up matmuls while decoding (GenerationConfig)")
    p.add_argument("--fold_norms", default="1",
                   help="comma list of 1/0: RMSNorm scales folded into the fused kernels (GenerationConfig.fold_norms)")
    p.add_argument("--remix_kernels", default="auto",
                   help="comma list of GenerationConfig.remix_kernels values for the remix adapter (auto, xla, pallas)")
    p.add_argument("--profile", type=int, default=0,
                   help="trace this many more calls per configuration and print where the device time goes")
    args = p.parse_args(argv)

    cfg, params, tokenizer = load(args.model, args.shape, args.dtype)
    prompt = prompt_ids(tokenizer, cfg.vocab_size, args.prompt_len)
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    common = {
        "model": args.model or f"random:{args.shape}",
        "dtype": args.dtype,
        "prompt_tokens": len(prompt),
        "new_tokens": args.new_tokens,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
    }
    rows = []
    base_cfg = cfg
    for unroll in [int(u) for u in args.unroll.split(",") if u]:
        cfg = base_cfg.replace(scan_unroll=unroll)
        for adapter in [a for a in args.adapters.split(",") if a]:
            if adapter == "none":
                model, variables = Decoder(cfg), {"params": params}
            elif adapter == "remix":
                model, variables = remix_variables(cfg, params)
            else:
                raise SystemExit(f"--adapters: unknown adapter {adapter!r} (none, remix)")
            # folding needs the fused kernels: (fuse, fold) pairs without repeats
            pairs = list(dict.fromkeys((f, n and f) for f in flags(args.fuse) for n in flags(args.fold_norms)))
            modes = [k for k in args.remix_kernels.split(",") if k] if adapter == "remix" else ["auto"]
            for (fuse, fold), mode in itertools.product(pairs, modes):
                for b in batches:
                    row = {
                        "impl": "remix_jax",
                        "adapter": adapter,
                        "batch": b,
                        "scan_unroll": unroll,
                        "fused_projections": fuse,
                        "fold_norms": fold,
                        **({"remix_kernels": mode} if adapter == "remix" else {}),
                        **common,
                        **time_ours(model, variables, prompt, b, args.new_tokens, args.repeats, args.profile,
                                    fuse, fold, mode),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    cfg = base_cfg
    if args.peer == "hf":
        import torch
        import transformers

        model, dev = hf_model(cfg, params, args.dtype)
        for b in batches:
            row = {
                "impl": "transformers",
                "adapter": "none",
                "batch": b,
                **common,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                **time_hf(model, dev, prompt, b, args.new_tokens, args.repeats),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    elif args.peer:
        raise SystemExit(f"--peer: unknown peer {args.peer!r} (hf)")
    return rows


if __name__ == "__main__":
    main()
