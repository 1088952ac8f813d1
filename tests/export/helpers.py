"""Helpers of the export tests: tiny random Hugging Face checkpoints read through our HF import, adapters with
every factor non-zero, logits of our model and of a PyTorch one.

The reference implementations are transformers' PyTorch models and peft; peft is a test-only extra
(pip install peft==0.21.2).
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from remix_jax.adapters import AdapterConfig, build_model, init_adapter_variables  # noqa: E402
from remix_jax.models.hf_io import load_hf_checkpoint  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)
KINDS = {
    "llama": ("llama", dict(COMMON, tie_word_embeddings=False, rope_theta=10000.0)),
    "qwen2": ("qwen2", dict(COMMON, tie_word_embeddings=False, rope_theta=1000000.0, use_sliding_window=False)),
    "tied": ("llama", dict(COMMON, tie_word_embeddings=True, rope_theta=10000.0)),
}
TOKENS = np.random.default_rng(0).integers(0, COMMON["vocab_size"], size=(2, 24))
PEFT_INSTALL = "pip install peft==0.21.2"


def require_peft():
    return pytest.importorskip("peft", reason=f"peft is not installed ({PEFT_INSTALL})")


@functools.cache
def _hf_dir(kind: str, root: str):
    model_type, kw = KINDS[kind]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **kw))
    with torch.no_grad():  # random biases and norm scales so that those paths count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    d = pathlib.Path(root) / kind
    model.save_pretrained(d)
    return d


def tiny_checkpoint(kind: str, root) -> tuple:
    """(HF directory, ModelConfig, our float32 params) of the tiny model ``kind`` saved under ``root``."""
    d = _hf_dir(kind, str(root))
    cfg, params = load_hf_checkpoint(d)
    return d, cfg, params


def random_trainable(model, seed: int = 0, router_std: float = 1.0) -> dict:
    """Adapter/router variables of ``model`` with every factor random (B non-zero, DoRA magnitudes moved) and
    router weights spread like trained ones (logits of order 1 differing per token), float32 numpy."""
    rng = np.random.default_rng(seed)
    tr = init_adapter_variables(model, jax.random.key(seed))

    def move(path, x):  # magnitudes by a few percent of the column norms (~0.16 here), factors by O(1)
        std = 0.02 if "magnitude_delta" in jax.tree_util.keystr(path) else 0.3
        return (np.asarray(x) + rng.normal(0, std, x.shape)).astype(np.float32)

    return {"adapter": jax.tree_util.tree_map_with_path(move, tr["adapter"]),
            "router": jax.tree.map(lambda x: rng.normal(0, router_std, x.shape).astype(np.float32), tr["router"])}


def adapted(cfg, **adapter_kw):
    acfg = AdapterConfig(**adapter_kw)
    return acfg, build_model(cfg, acfg)


def our_logits(model, base, trainable, tokens=TOKENS, jit: bool = False) -> np.ndarray:
    """The model's logits; ``jit``: as one program (a real model's forward costs seconds dispatched op by op)."""
    forward = lambda v, t: model.apply(v, t)[0]  # noqa: E731
    return np.asarray((jax.jit(forward) if jit else forward)({"params": base, **trainable}, jnp.asarray(tokens)))


def torch_logits(model, tokens=TOKENS) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(np.asarray(tokens))).logits.float().numpy()
