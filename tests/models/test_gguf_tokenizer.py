"""GGUF import and tokenizers: synthetic GGUF round trips, the real SmolLM2-135M-Instruct GGUF against
transformers' own GGUF loading (logits and token ids), and clear errors on bad input."""

import gzip
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from remix_jax.models.gguf_io import load_gguf, unpermute_rows
from remix_jax.models.llama import Decoder, init_params
from remix_jax.models.loading import load_model, model_format
from remix_jax.models.model_config import ModelConfig, ModelLoadError, named_config, rope_inv_freq
from remix_jax.models.tokenizer import encode_prompt, load_tokenizer, stop_token_ids

# ---------------------------------------------------------------------------------------------------
# Synthetic GGUF files written with gguf.GGUFWriter, the way llama.cpp's converter lays them out.


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf permutation of q/k rows (for its interleaved RoPE)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_gguf(path, cfg: ModelConfig, params: dict, arch: str | None = None, rope_freqs=None,
                bad_shape: str | None = None, extra_tensor: str | None = None):
    import gguf

    arch = arch or cfg.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    p = jax.tree.map(np.asarray, params)
    w.add_tensor("token_embd.weight", p["embed"]["embedding"])
    w.add_tensor("output_norm.weight", p["final_norm"]["scale"])
    if "lm_head" in p:
        w.add_tensor("output.weight", np.ascontiguousarray(p["lm_head"].T))
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    lay = p["layers"]
    for i in range(cfg.num_layers):
        t = {
            "attn_norm.weight": lay["input_norm"]["scale"][i],
            "ffn_norm.weight": lay["post_attn_norm"]["scale"][i],
            "attn_output.weight": lay["attn"]["o_proj"]["kernel"][i].T,
            "ffn_gate.weight": lay["mlp"]["gate_proj"]["kernel"][i].T,
            "ffn_up.weight": lay["mlp"]["up_proj"]["kernel"][i].T,
            "ffn_down.weight": lay["mlp"]["down_proj"]["kernel"][i].T,
        }
        for name, heads in (("q", cfg.num_heads), ("k", cfg.num_kv_heads), ("v", None)):
            proj = lay["attn"][f"{name}_proj"]
            kern = proj["kernel"][i].T
            bias = proj["bias"][i] if "bias" in proj else None
            if arch == "llama" and heads is not None:
                kern = _permute(kern, heads)
                bias = _permute(bias, heads) if bias is not None else None
            t[f"attn_{name}.weight"] = kern
            if bias is not None:
                t[f"attn_{name}.bias"] = bias
        if bad_shape and i == 0:
            t[bad_shape] = t[bad_shape][:-1]
        for k, v in t.items():
            w.add_tensor(f"blk.{i}.{k}", np.ascontiguousarray(v, np.float32))
    if extra_tensor:
        w.add_tensor(extra_tensor, np.zeros((4,), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_llama():
    cfg = named_config("tiny", max_position_embeddings=128)
    return cfg, init_params(Decoder(cfg), jax.random.key(1))["params"]


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_unpermute_inverts_llama_cpp_permutation():
    w = np.arange(4 * 16 * 3, dtype=np.float32).reshape(64, 3)
    for heads in (1, 2, 4):
        np.testing.assert_array_equal(unpermute_rows(_permute(w, heads), heads), w)
        assert not np.array_equal(_permute(w, heads), w)
    b = np.arange(64, dtype=np.float32)
    np.testing.assert_array_equal(unpermute_rows(_permute(b, 4), 4), b)


def test_llama_gguf_round_trip(tmp_path, tiny_llama):
    cfg, params = tiny_llama
    path = _write_gguf(tmp_path / "tiny.gguf", cfg, params)
    cfg2, params2 = load_model(path)  # dispatches on the .gguf suffix
    assert cfg2 == cfg.replace(rope_theta=float(np.float32(cfg.rope_theta)),
                               rms_norm_eps=float(np.float32(cfg.rms_norm_eps)))
    _assert_trees_equal(params2, params)
    _, bf16 = load_gguf(path, param_dtype="bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(bf16))


def test_qwen2_gguf_with_biases_round_trip(tmp_path):
    cfg = named_config("tiny", model_type="qwen2", attention_bias=True, tie_embeddings=True,
                       rms_norm_eps=1e-6, max_position_embeddings=128)
    params = init_params(Decoder(cfg), jax.random.key(2))["params"]
    # Non-zero biases so a wrong permutation or a dropped bias would show.
    params = jax.tree_util.tree_map_with_path(
        lambda kp, x: x + 0.1 * jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) / x.size
        if kp[-1].key == "bias" else x, params)
    cfg2, params2 = load_gguf(_write_gguf(tmp_path / "qwen.gguf", cfg, params))
    assert cfg2.model_type == "qwen2" and cfg2.attention_bias and cfg2.tie_embeddings
    assert "lm_head" not in params2
    _assert_trees_equal(params2, params)


def test_llama3_rope_scaling_recovered_from_rope_freqs(tmp_path, tiny_llama):
    cfg, params = tiny_llama
    scaling = (("factor", 8.0), ("high_freq_factor", 4.0), ("low_freq_factor", 1.0),
               ("original_max_position_embeddings", 8192), ("rope_type", "llama3"))
    cfg = cfg.replace(head_dim=16, rope_theta=500000.0)
    divisors = rope_inv_freq(cfg) / rope_inv_freq(cfg.replace(rope_scaling=scaling))
    assert divisors.max() > 7.9  # the scaling actually changes low frequencies
    cfg2, _ = load_gguf(_write_gguf(tmp_path / "l3.gguf", cfg, params, rope_freqs=divisors))
    assert cfg2.rope_scaling == scaling


@pytest.mark.parametrize("case, match", [
    ("arch", "unsupported GGUF architecture 'gpt2'"),
    ("shape", r"tensor 'blk.0.attn_k.weight' has shape \(31, 64\), expected \(32, 64\)"),
    ("extra", "unexpected tensors .*blk.9.attn_q.weight"),
    ("truncated", "not a readable GGUF file"),
])
def test_bad_gguf_files_give_one_clear_error(tmp_path, tiny_llama, case, match):
    cfg, params = tiny_llama
    path = tmp_path / f"{case}.gguf"
    if case == "arch":
        _write_gguf(path, cfg, params, arch="gpt2")
    elif case == "shape":
        _write_gguf(path, cfg, params, bad_shape="attn_k.weight")
    elif case == "extra":
        _write_gguf(path, cfg, params, extra_tensor="blk.9.attn_q.weight")
    else:
        full = _write_gguf(tmp_path / "full.gguf", cfg, params).read_bytes()
        path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ModelLoadError, match=match) as e:
        load_gguf(path)
    assert str(path) in str(e.value)


def test_missing_and_unknown_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "absent.gguf")
    with pytest.raises(ModelLoadError, match="no such file"):
        load_gguf(tmp_path / "absent.gguf")
    with pytest.raises(ModelLoadError, match="no such file"):
        load_tokenizer(tmp_path / "absent")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="unknown model format"):
        model_format(tmp_path / "weights.bin")
    with pytest.raises(ModelLoadError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path)
    with pytest.raises(ModelLoadError, match="not a file"):
        load_gguf(tmp_path)


def test_gguf_without_tokenizer_is_refused(tmp_path, tiny_llama):
    path = _write_gguf(tmp_path / "notok.gguf", *tiny_llama)
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load_tokenizer(path)


# ---------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct GGUF (Q4_1), loaded once per session.


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf, smollm2_model):
    cfg, params = smollm2_model  # load_model(smollm2_gguf): load_gguf on the real file, shared by the session
    return cfg, params, load_tokenizer(smollm2_gguf)


def test_real_gguf_config(smollm2):
    cfg, params, _ = smollm2
    expected = named_config("smollm2-135m", rms_norm_eps=float(np.float32(1e-5)))
    assert cfg == expected
    assert params["layers"]["attn"]["k_proj"]["kernel"].shape == (30, 576, 192)
    assert "lm_head" not in params


def test_real_gguf_logits_match_transformers(smollm2, smollm2_gguf):
    """Same weights as transformers' own GGUF loading (torch dequantisation), same float32 logits."""
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF models
    import torch
    from transformers import AutoModelForCausalLM

    cfg, params, tok = smollm2
    ids = tok.encode("The capital of France is")
    ref = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name,
                                               dtype=torch.float32)
    with torch.no_grad():
        want = ref(torch.tensor([ids])).logits[0].numpy()
    got = np.asarray(jax.jit(lambda p, x: Decoder(cfg).apply({"params": p}, x)[0])(params, jnp.asarray([ids]))[0])
    # Observed max |diff| ~2e-4 on logits of magnitude ~30 (float32 summation order over 30 layers).
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    assert tok.decode([int(got[-1].argmax())]) == " Paris"


def _real_texts(data_dir, humaneval_file) -> list[str]:
    with open(data_dir / "gsm8k" / "test.jsonl") as f:
        gsm = [json.loads(line)["question"] for line in f][:250]
    with gzip.open(humaneval_file, "rt") as f:
        he = [json.loads(line)["prompt"] for line in f]
    uni = ["héllo wörld ñ 日本語のテキスト 🙂👍🏽 Ελληνικά русский عربى", "a\u00a0b\u200bc\u00e9\u0301",
           "  leading spaces\n\n\ttabs 12345 3.14159 -0.5e10", "<|im_start|>user\nHi<|im_end|>\n",
           "It's we'll THEY'RE ÉCOLE naïve façade", "数学: 3×4=12, √2≈1.414", "\r\n\r\n  \t x", ""]
    return gsm + he + uni


def test_gguf_tokenizer_matches_transformers_conversion(smollm2, smollm2_gguf, data_dir, humaneval_file):
    """Same ids as transformers' GGUF conversion on ~420 real texts.

    transformers ignores ``tokenizer.ggml.pre`` and pre-tokenizes with the GPT-2 regex only, whereas
    SmolLM2 (its tokenizer.json and llama.cpp's "smollm" pre-tokenizer) first splits digits
    individually. We follow the model's own rule, so: (a) ids equal transformers' conversion with
    SmolLM2's pre-tokenizer set on it, on every text; (b) ids equal the unmodified conversion on every
    text except those with a whitespace run before a digit (the only place the two rules differ).
    """
    from tokenizers import pre_tokenizers
    from transformers import AutoTokenizer

    _, _, ours = smollm2
    texts = _real_texts(data_dir, humaneval_file)
    assert len(texts) >= 400
    ref = AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    plain = [ref.encode(t) for t in texts]
    backend = ref.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    digits = [backend.encode(t, add_special_tokens=False).ids for t in texts]
    got = [ours.encode(t) for t in texts]
    assert [i for i, (a, b) in enumerate(zip(got, digits, strict=True)) if a != b] == []
    differ = [t for t, a, b in zip(texts, got, plain, strict=True) if a != b]
    assert all(re.search(r"\s\s\d", t) for t in differ), differ[:3]
    assert len(differ) < len(texts) // 5
    assert all(ours.decode(g) == t for g, t in zip(got, texts, strict=True))


def test_gguf_tokenizer_special_tokens_and_chat(smollm2):
    _, _, tok = smollm2
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (1, 2, 2, 0)
    assert tok.convert_ids_to_tokens(2) == "<|im_end|>"
    assert tok.encode("<|im_start|>user") == [1, 4093]  # control tokens are matched whole
    ids = encode_prompt(tok, "Hi", chat=True)
    assert tok.decode(ids) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(1) == 3 and ids.count(2) == 2
    assert encode_prompt(tok, "Hi") == tok.encode("Hi")
    assert set(stop_token_ids(tok)) == {0, 2}


def test_directory_tokenizer_has_the_same_api(smollm2, tmp_path):
    """A model directory's tokenizer.json (here: ours saved) loads through AutoTokenizer, same ids."""
    _, _, tok = smollm2
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    text = "Natalia sold clips to 48 of her friends in April.\n  x = 12"
    assert again.encode(text) == tok.encode(text)
    assert encode_prompt(again, "Hi", chat=True) == encode_prompt(tok, "Hi", chat=True)
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (1, 2, 2)
    assert stop_token_ids(again) == stop_token_ids(tok)
