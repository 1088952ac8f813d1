"""Logits parity with transformers' PyTorch implementation on small random checkpoints, export round trip,
and clear errors for bad checkpoints."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from remix_jax.models.attention import init_cache  # noqa: E402
from remix_jax.models.hf_io import load_hf_checkpoint, save_hf_checkpoint  # noqa: E402
from remix_jax.models.llama import Decoder  # noqa: E402
from remix_jax.models.model_config import ModelLoadError  # noqa: E402

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5)

CASES = {
    # Llama 3.1-style: GQA, llama3 rope scaling, untied embeddings.
    "llama3": ("llama", dict(COMMON, rope_theta=500000.0, tie_word_embeddings=False,
                             rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 32})),
    # Qwen2: q/k/v biases.
    "qwen2": ("qwen2", dict(COMMON, rope_theta=1000000.0, tie_word_embeddings=False,
                            use_sliding_window=False)),
    # SmolLM2 / Llama 3.2-style tied embeddings, MHA.
    "tied": ("llama", dict(COMMON, num_key_value_heads=4, rope_theta=10000.0, tie_word_embeddings=True)),
    # Mistral-style.
    "mistral": ("mistral", dict(COMMON, rope_theta=10000.0, tie_word_embeddings=False, sliding_window=None)),
}


def _hf_model(kind: str):
    model_type, kw = CASES[kind]
    cfg = transformers.AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float().eval()
    with torch.no_grad():  # random biases so the bias path is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=list(CASES))
def hf_dir(request, tmp_path_factory):
    model = _hf_model(request.param)
    d = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(d, safe_serialization=True)
    return request.param, model, d


def _hf_logits(model, tokens, attention_mask=None):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(np.asarray(tokens)),
                    attention_mask=None if attention_mask is None else torch.tensor(np.asarray(attention_mask)))
    return out.logits.numpy()


@functools.cache
def _apply(model: Decoder):
    """model.apply as one jitted program per input shape (a decode step, the prefill, the full forward) instead of
    op-by-op dispatch."""
    return jax.jit(model.apply)


def _greedy_ours(model, variables, cfg, prompt, n_new):
    cache = init_cache(cfg, 1, len(prompt) + n_new)
    logits, cache = _apply(model)(variables, jnp.asarray([prompt]), cache=cache)
    out = []
    nxt = int(jnp.argmax(logits[0, -1]))
    for i in range(n_new):
        out.append(nxt)
        logits, cache = _apply(model)(variables, jnp.asarray([[nxt]]),
                                    positions=jnp.asarray([[len(prompt) + i]]), cache=cache)
        nxt = int(jnp.argmax(logits[0, -1]))
    return out


def test_logits_and_greedy_match_transformers(hf_dir):
    kind, hf_model, d = hf_dir
    cfg, params = load_hf_checkpoint(d)
    if kind == "qwen2":
        assert cfg.attention_bias
    if kind == "llama3":
        assert cfg.rope_scaling_dict["rope_type"] == "llama3"
    model = Decoder(cfg)
    variables = {"params": jax.tree.map(jnp.asarray, params)}
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 48))
    ours, _ = _apply(model)(variables, jnp.asarray(tokens))
    ref = _hf_logits(hf_model, tokens)
    assert np.abs(np.asarray(ours) - ref).max() < 1e-4

    prompt = [int(t) for t in tokens[0, :7]]
    with torch.no_grad():
        hf_gen = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                   pad_token_id=0)[0, len(prompt):].tolist()
    assert _greedy_ours(model, variables, cfg, prompt, 12) == hf_gen


def test_padding_matches_transformers_masking(hf_dir):
    _, hf_model, d = hf_dir
    cfg, params = load_hf_checkpoint(d)
    model = Decoder(cfg)
    variables = {"params": jax.tree.map(jnp.asarray, params)}
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg.vocab_size, size=(1, 20))
    ref = _hf_logits(hf_model, tokens)[0]
    # Left padding by 5 and right padding by 5: real tokens keep their logits.
    for left in (True, False):
        pad = np.zeros((1, 5), np.int64)
        t = np.concatenate([pad, tokens], 1) if left else np.concatenate([tokens, pad], 1)
        seg = np.concatenate([np.zeros((1, 5)), np.ones((1, 20))], 1) if left else \
            np.concatenate([np.ones((1, 20)), np.zeros((1, 5))], 1)
        out, _ = _apply(model)(variables, jnp.asarray(t), segment_ids=jnp.asarray(seg, jnp.int32))
        real = np.asarray(out)[0, 5:] if left else np.asarray(out)[0, :20]
        assert np.abs(real - ref).max() < 1e-4


def test_export_round_trip(hf_dir, tmp_path):
    _, hf_model, d = hf_dir
    cfg, params = load_hf_checkpoint(d)
    out = save_hf_checkpoint(tmp_path / "export", cfg, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").float().eval()
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, size=(2, 16))
    np.testing.assert_allclose(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens), atol=1e-5)
    cfg2, params2 = load_hf_checkpoint(out)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_kv_cache_matches_full_forward(hf_dir):
    _, _, d = hf_dir
    cfg, params = load_hf_checkpoint(d)
    model = Decoder(cfg)
    variables = {"params": jax.tree.map(jnp.asarray, params)}
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, cfg.vocab_size, size=(2, 12)))
    # Row 0 left-padded by 3: segment ids mark padding, positions count real tokens.
    seg = jnp.asarray([[0, 0, 0] + [1] * 9, [1] * 12], jnp.int32)
    full, _ = _apply(model)(variables, tokens, segment_ids=seg)
    cache = init_cache(cfg, 2, 16)
    pos = jnp.asarray([[0, 0, 0] + list(range(9)), list(range(12))], jnp.int32)
    step_logits, cache = _apply(model)(variables, tokens[:, :5], segment_ids=seg[:, :5], positions=pos[:, :5],
                                     cache=cache)
    outs = [step_logits]
    for t in range(5, 12):
        lg, cache = _apply(model)(variables, tokens[:, t:t + 1], segment_ids=seg[:, t:t + 1],
                                positions=pos[:, t:t + 1], cache=cache)
        outs.append(lg)
    inc = jnp.concatenate(outs, 1)
    valid = np.asarray(seg) != 0
    assert np.abs(np.asarray(inc)[valid] - np.asarray(full)[valid]).max() < 1e-5


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    model = _hf_model("tied")
    d = tmp_path_factory.mktemp("good")
    model.save_pretrained(d, safe_serialization=True)
    return d


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_hf_checkpoint(tmp_path / "nope")


def test_unsupported_architecture(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path / "gpt2")
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"config\.json: unsupported architecture model_type='gpt2'"):
        load_hf_checkpoint(d)


def test_shape_mismatch(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path / "shape")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"tensor model\.layers\.0\.mlp\.\w+_proj\.weight has shape"):
        load_hf_checkpoint(d)


def test_truncated_file(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path / "trunc")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: .*truncated"):
        load_hf_checkpoint(d)


def test_missing_weights(good_dir, tmp_path):
    d = _copy(good_dir, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_hf_checkpoint(d)


def test_sharded_checkpoint(tmp_path):
    model = _hf_model("llama3")
    d = tmp_path / "sharded"
    model.save_pretrained(d, safe_serialization=True, max_shard_size="40KB")
    assert (d / "model.safetensors.index.json").exists()
    cfg, params = load_hf_checkpoint(d)
    variables = {"params": jax.tree.map(jnp.asarray, params)}
    tokens = np.random.default_rng(4).integers(0, cfg.vocab_size, size=(1, 10))
    ours, _ = Decoder(cfg).apply(variables, jnp.asarray(tokens))
    assert np.abs(np.asarray(ours) - _hf_logits(model, tokens)).max() < 1e-4
