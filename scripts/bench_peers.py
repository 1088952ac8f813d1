"""Training throughput of the PyTorch peers on the same shapes as scripts/bench_train.py.

Peers: transformers + peft LoRA (``--peer=peft``), the ``mixlora`` package (MixLoRA's own implementation,
``--peer=mixlora``) and Unsloth's ``FastLanguageModel`` LoRA (``--peer=unsloth``). Random-init weights in bf16,
sdpa attention, AdamW on the adapter parameters, labels = inputs, no gradient checkpointing (Unsloth's offloaded
checkpointing with ``--unsloth_gc=unsloth``). Prints one JSON line with tokens/s, step time and peak device memory.

Unsloth loads from a path and patches transformers when imported: its peer saves the random model and a word-level
tokenizer of the model's vocabulary to a temporary directory and imports ``unsloth`` before transformers (set
HF_HUB_OFFLINE=1 on a machine without network). Its wheels and their dependencies are listed in docs/performance.md.

    python scripts/bench_peers.py --peer=peft --shape=llama3.2-1b --batch=8 --seq=1024 --rank=16
    python scripts/bench_peers.py --peer=mixlora --shape=llama3.2-1b --batch=8 --seq=1024 --rank=8 \
        --num_experts=8 --top_k=2

Normally launched by scripts/bench_train.py (one subprocess per configuration, so each gets the whole GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import time

FFN = ("gate_proj", "up_proj", "down_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj") + FFN


def _hf_model(shape: str, torch, transformers):
    from remix_jax.models.model_config import named_config, to_hf_config_dict

    cfg_dict = to_hf_config_dict(named_config(shape))
    cfg_dict.pop("architectures", None)
    model_type = cfg_dict.pop("model_type")
    hf_cfg = transformers.AutoConfig.for_model(model_type, **cfg_dict)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(
            hf_cfg, attn_implementation="sdpa", dtype=torch.bfloat16)
    model.config.use_cache = False
    return model


def _peft_model(model, targets, rank, alpha, use_rslora, use_dora):
    import peft

    lcfg = peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0,
                           use_rslora=use_rslora, use_dora=use_dora, task_type="CAUSAL_LM")
    return peft.get_peft_model(model, lcfg)


def _mixlora_model(model, targets, rank, alpha, num_experts, top_k, torch):
    import mixlora
    from mixlora.config import MixLoraConfig

    cfg = MixLoraConfig.from_config({
        "base_model_name_or_path": "random", "task_type": "CAUSAL_LM", "peft_type": "MIXLORA",
        "r": rank, "lora_alpha": alpha, "lora_dropout": 0.05, "target_modules": list(targets),
        "routing_strategy": "mixlora", "num_experts": num_experts, "top_k": top_k,
    })
    cfg.adapter_name_ = "default"
    cfg.dtype_ = torch.bfloat16
    cfg.act_fn_ = "silu"  # the package leaves this to its trainer; LLaMA FFNs use SiLU
    for p in model.parameters():
        p.requires_grad_(False)
    d, f = model.config.hidden_size, model.config.intermediate_size
    dims = {"gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}
    weights = {}
    for i in range(model.config.num_hidden_layers):
        gate = torch.empty(num_experts, d, device="cuda", dtype=torch.bfloat16).normal_(0, 0.02)
        weights[f"mixlora.layers.{i}.mlp.moe_gate.weight"] = gate.requires_grad_()
        for name in targets:
            din, dout = dims[name]
            for e in range(num_experts):
                pre = f"mixlora.layers.{i}.mlp.{name}.experts.{e}"
                a = torch.empty(rank, din, device="cuda", dtype=torch.bfloat16)
                torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                weights[f"{pre}.lora_A.weight"] = a.requires_grad_()
                weights[f"{pre}.lora_B.weight"] = torch.zeros(dout, rank, device="cuda",
                                                              dtype=torch.bfloat16).requires_grad_()
    mixlora.inject_adapter_in_model(model, cfg, weights)
    # The package copies A/B into its own LoraLinear modules (kept in plain dicts, so they are not registered
    # as model parameters); the router gate is used as given.
    trainable = []
    for layer in model.model.layers:
        moe = layer.mlp.mixlora_moes["default"]
        trainable.append(moe.gate_)
        for lora in moe.experts_.values():
            trainable += [lora.lora_A.weight, lora.lora_B.weight]
    assert all(t.requires_grad for t in trainable)
    return model, trainable


def _word_tokenizer(vocab_size: int):
    """A word-level tokenizer with exactly ``vocab_size`` entries ("t0", "t1", ...; eos = pad = the last): the
    peers feed token ids directly, but Unsloth's loader wants a tokenizer beside the weights."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    last = f"t{vocab_size - 1}"
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", eos_token=last, pad_token=last)


def _unsloth_model(a, model, targets, torch, workdir: str):
    """The random model through Unsloth: saved with a tokenizer to ``workdir``, loaded by FastLanguageModel in bf16
    (no quantisation), LoRA by FastLanguageModel.get_peft_model (its fused LoRA MLP and cross-entropy)."""
    from unsloth import FastLanguageModel

    model.save_pretrained(workdir, safe_serialization=True)
    _word_tokenizer(model.config.vocab_size).save_pretrained(workdir)
    del model
    torch.cuda.empty_cache()
    gc = {"none": False, "unsloth": "unsloth"}[a.unsloth_gc]
    model, _ = FastLanguageModel.from_pretrained(
        model_name=workdir, max_seq_length=a.seq, dtype=torch.bfloat16, load_in_4bit=False,
        fix_tokenizer=False, use_gradient_checkpointing=gc, local_files_only=True)
    model = FastLanguageModel.get_peft_model(
        model, r=a.rank, target_modules=list(targets), lora_alpha=a.alpha, lora_dropout=0.0, bias="none",
        use_gradient_checkpointing=gc, random_state=0, use_rslora=a.method == "rslora")
    return model


def run(a) -> dict:
    if a.peer == "unsloth":
        import unsloth  # noqa: F401  (must be imported before transformers: it patches it)
    import tempfile

    import torch
    import transformers

    torch.manual_seed(0)
    model = _hf_model(a.shape, torch, transformers)
    targets = FFN if a.targets == "ffn" else ALL
    workdir = tempfile.TemporaryDirectory(prefix="bench_peers_")
    if a.peer == "unsloth":
        model = _unsloth_model(a, model, targets, torch, workdir.name)
        trainable = [p for p in model.parameters() if p.requires_grad]
    elif a.peer == "peft":
        model = _peft_model(model, targets, a.rank, a.alpha, a.method == "rslora", a.method == "dora")
        trainable = [p for p in model.parameters() if p.requires_grad]
    elif a.peer == "mixlora":
        model, trainable = _mixlora_model(model, targets, a.rank, a.alpha, a.num_experts, a.top_k, torch)
    else:
        raise SystemExit(f"unknown peer {a.peer!r}")
    model.train()
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    vocab = model.config.vocab_size
    gen = torch.Generator(device="cuda").manual_seed(0)
    batches = [torch.randint(0, vocab, (a.batch, a.seq), device="cuda", generator=gen) for _ in range(4)]

    def step(tokens):
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    for i in range(a.warmup):
        step(batches[i % 4])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(a.steps):
        loss = step(batches[i % 4])
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    n_train = sum(p.numel() for p in trainable)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    if a.peer == "unsloth":
        import unsloth

        versions["unsloth"] = unsloth.__version__
    workdir.cleanup()
    return {
        "impl": a.peer if a.peer != "unsloth" or a.unsloth_gc == "none" else "unsloth+offloaded_gc",
        "method": "mixlora" if a.peer == "mixlora" else a.method, "shape": a.shape,
        "batch": a.batch, "seq": a.seq, "rank": a.rank, "targets": a.targets,
        "num_experts": a.num_experts if a.peer == "mixlora" else 1,
        "top_k": a.top_k if a.peer == "mixlora" else 1, "num_samples": 1,
        "step_ms": round(dt * 1e3, 2), "tokens_per_s": round(a.batch * a.seq / dt, 1),
        "sample_tokens_per_s": round(a.batch * a.seq / dt, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "trainable_params": n_train, "loss": float(loss),
        "versions": versions,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", required=True, choices=["peft", "mixlora", "unsloth"])
    ap.add_argument("--method", default="lora", choices=["lora", "rslora", "dora"])
    ap.add_argument("--unsloth_gc", default="none", choices=["none", "unsloth"],
                    help="Unsloth's gradient checkpointing: none, or its offloaded 'unsloth' mode")
    ap.add_argument("--shape", default="llama3.2-1b")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--targets", default="ffn", choices=["ffn", "all"])
    ap.add_argument("--num_experts", type=int, default=8)
    ap.add_argument("--top_k", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    a = ap.parse_args()
    try:
        print(json.dumps(run(a)), flush=True)
    except Exception as e:  # one JSON line even on failure (e.g. out of memory)
        print(json.dumps({"impl": a.peer, "shape": a.shape, "error": repr(e)[:800]}), flush=True)
        raise SystemExit(1) from e


if __name__ == "__main__":
    main()
