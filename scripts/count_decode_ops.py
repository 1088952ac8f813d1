"""Count the kernels of one KV-cache decode step in XLA's optimized HLO, base model vs a remix adapter.

At batch 1 greedy decoding is launch-bound, so the cost of routing is mostly the number of extra kernels
per layer. This compiles one decode step (one new token per row against a KV cache, as in
remix_jax/inference/generation.py) for abstract inputs of the given shape (no weights are materialised)
and prints one JSON line per (adapter, batch) with the op counts of the optimized HLO:

    kernels        instructions outside fused computations that launch work (everything except
                   parameter, constant, get-tuple-element, tuple, bitcast and control flow)
    fusion / custom-call / sort / dot / while ... counts per opcode (same scope)
    per_layer      kernels inside the layer loop's body (the scanned block), when there is one
    launches_per_step   kernels + (num_layers - 1) * per_layer: what one decode step launches
    fusion_kinds   fusions by kind (kLoop, kInput, kOutput, kCustom: library/GEMM fusions)

    python scripts/count_decode_ops.py                          # smollm2-135m, bf16, batch 1,16,128
    python scripts/count_decode_ops.py --shape=tiny --batch_sizes=1 --dtype=float32

Run it on the GPU too: the GPU backend's fusion decisions differ from the CPU's.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from remix_jax.inference.variables import fuse_projections  # noqa: E402
from remix_jax.models.attention import init_cache  # noqa: E402
from remix_jax.models.llama import Decoder, lm_logits  # noqa: E402
from remix_jax.models.model_config import named_config  # noqa: E402

# Instructions that launch no work of their own.
FREE_OPS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call",
            "after-all", "opt-barrier"}
_COMP_HEAD = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OPCODE = re.compile(r"(?:^|[\s)])([a-z][a-z0-9\-]*)\(")
_CALLED = re.compile(r"\b(calls|to_apply|body|condition|branch_computations|true_computation|false_computation)="
                     r"(\{[^}]*\}|%?[\w.\-]+)")


def parse_hlo(text: str) -> dict[str, list[tuple[str, str]]]:
    """{computation name: [(opcode, instruction line)]} of an HLO module's text; entry named 'ENTRY'."""
    comps: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if current is None:
            m = _COMP_HEAD.match(stripped)
            if m and not stripped.startswith("HloModule"):
                current = "ENTRY" if m.group(1) else m.group(2)
                comps[current] = []
            continue
        if stripped == "}":
            current = None
            continue
        if " = " not in stripped:
            continue
        rhs = stripped.split(" = ", 1)[1]
        m = _OPCODE.search(rhs)
        if m:
            comps[current].append((m.group(1), stripped))
    return comps


def _callees(line: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = collections.defaultdict(list)
    for kind, target in _CALLED.findall(line):
        names = target.strip("{}").split(",")
        out[kind].extend(n.strip().lstrip("%") for n in names if n.strip())
    return out


def count_kernels(text: str) -> dict:
    """Op counts of the launched instructions (entry and control-flow bodies, not fused computations)."""
    comps = parse_hlo(text)
    launched, seen, loops = [], set(), []
    stack = ["ENTRY"]
    while stack:
        name = stack.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        launched.append(name)
        for opcode, line in comps[name]:
            callees = _callees(line)
            for kind in ("body", "condition", "branch_computations", "true_computation", "false_computation"):
                stack.extend(callees.get(kind, []))
            if opcode == "call":
                stack.extend(callees.get("to_apply", []))
            if opcode == "while":
                loops.extend(callees.get("body", []))
    counts: collections.Counter = collections.Counter()
    per_comp: dict[str, int] = {}
    targets: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    for name in launched:
        n = 0
        for opcode, line in comps[name]:
            if opcode in FREE_OPS:
                continue
            counts[opcode] += 1
            n += 1
            if opcode == "custom-call":
                m = re.search(r'custom_call_target="([^"]+)"', line)
                targets[m.group(1) if m else "?"] += 1
            if opcode == "fusion":
                m = re.search(r"kind=(\w+)", line)
                kinds[m.group(1) if m else "?"] += 1
        per_comp[name] = n
    out = {"kernels": sum(counts.values()), **dict(sorted(counts.items()))}
    if targets:
        out["custom_call_targets"] = dict(targets)
    out["fusion_kinds"] = dict(sorted(kinds.items()))
    # The innermost loop body with the most kernels is the scanned block (one layer).
    bodies = [per_comp[b] for b in loops if b in per_comp]
    if bodies:
        out["per_layer"] = max(bodies)
    return out


def remix_model(cfg, experts: int, top_k: int, rank: int):
    from remix_jax.adapters import AdapterConfig, build_model

    acfg = AdapterConfig(method="remix", targets="ffn", num_experts=experts, top_k=top_k, rank=rank, alpha=16.0)
    return build_model(cfg, acfg)


def decode_step_hlo(model, cfg, batch: int, cache_len: int, fuse: bool = True, fold_norms: bool = True) -> str:
    """Optimized HLO text of one greedy decode step: (variables, tokens [B,1], positions [B,1], cache), with
    the q/k/v and gate/up kernels concatenated, the norms' scales folded into them where allowed and ReMix's
    loop-invariant matrices precomputed as generation does (``fuse_projections``, ``fuse_remix_inference``,
    ``Decoder.fold_norms``) unless ``fuse`` (``fold_norms``) is False."""
    tokens = jnp.zeros((batch, 1), jnp.int32)
    variables = jax.eval_shape(lambda k: model.init({"params": k, "routing": k}, tokens), jax.random.key(0))
    variables = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, variables,
                             is_leaf=lambda x: hasattr(x, "value") and hasattr(x, "names"))
    variables = {c: v for c, v in variables.items() if c != "routing_stats"}
    if fuse:
        from remix_jax.inference.variables import adapter_config_of, foldable_norms, fuse_remix_inference

        acfg = adapter_config_of(model)
        fold = fold_norms and foldable_norms(acfg)
        model = model.clone(fold_norms=fold)
        variables = jax.eval_shape(
            lambda v: fuse_remix_inference(fuse_projections(v, cfg.dtype, fold_norms=fold), acfg, cfg.dtype,
                                           fold_norms=fold), variables)
    cache = jax.eval_shape(lambda: init_cache(cfg, batch, cache_len))

    def step(variables, tok, pos, cache, key):
        (hidden, head), cache = model.apply(variables, tok, segment_ids=jnp.ones_like(tok), positions=pos,
                                            cache=cache, deterministic=True, return_hidden=True,
                                            rngs={"routing": key})
        logits = lm_logits(hidden[:, -1], head)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), cache

    args = (variables, jax.ShapeDtypeStruct((batch, 1), jnp.int32), jax.ShapeDtypeStruct((batch, 1), jnp.int32),
            cache, jax.eval_shape(lambda: jax.random.key(0)))
    return jax.jit(step, donate_argnums=(3,)).lower(*args).compile().as_text()


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="smollm2-135m")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--batch_sizes", default="1,16,128")
    p.add_argument("--cache_len", type=int, default=192, help="KV cache length (prompt bucket + new tokens)")
    p.add_argument("--adapters", default="none,remix", help="comma list of: none, remix")
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top_k", type=int, default=2)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--no_fuse", action="store_true", help="separate q/k/v and gate/up matmuls")
    p.add_argument("--no_fold", action="store_true", help="keep the RMSNorm scales out of the fused kernels")
    p.add_argument("--dump", default="", help="directory to write each optimized HLO text into")
    args = p.parse_args(argv)

    cfg = named_config(args.shape, dtype=args.dtype, param_dtype=args.dtype)
    rows = []
    for adapter in [a for a in args.adapters.split(",") if a]:
        if adapter == "none":
            model = Decoder(cfg)
        elif adapter == "remix":
            model = remix_model(cfg, args.experts, args.top_k, args.rank)
        else:
            raise SystemExit(f"--adapters: unknown adapter {adapter!r} (none, remix)")
        for b in [int(x) for x in args.batch_sizes.split(",") if x]:
            text = decode_step_hlo(model, cfg, b, args.cache_len, fuse=not args.no_fuse, fold_norms=not args.no_fold)
            if args.dump:
                os.makedirs(args.dump, exist_ok=True)
                with open(os.path.join(args.dump, f"decode_{adapter}_b{b}.hlo.txt"), "w") as f:
                    f.write(text)
            row = {"shape": args.shape, "dtype": args.dtype, "adapter": adapter, "batch": b,
                   "fused_projections": not args.no_fuse, "fold_norms": not (args.no_fuse or args.no_fold),
                   "backend": jax.default_backend(), "jax": jax.__version__, **count_kernels(text)}
            if "per_layer" in row:
                row["launches_per_step"] = row["kernels"] + (cfg.num_layers - 1) * row["per_layer"]
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


if __name__ == "__main__":
    main()
