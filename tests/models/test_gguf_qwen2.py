"""Qwen2 GGUF files with the quantisation types of Qwen2.5-Coder-0.5B-Instruct Q4_K_M, written here.

The real file (491 MB) stores F32 norms and q/k/v biases, Q5_0 embeddings and projections (its 896-wide rows are
no multiple of the K-quants' 256-element blocks), Q8_0 for the untied output head and half the attn_v weights,
and Q4_K / Q6_K for ffn_down (4864-wide rows). The tiny file below uses exactly those types, plus Q5_K, in the
same roles. Q5_0 / Q8_0 blocks come from ``gguf.quants.quantize``; K-quant blocks (which the gguf package
cannot quantise) are random bytes with sane float16 scales. Checked:

- the metadata -> ModelConfig mapping;
- every dequantised parameter equals ``gguf.quants.dequantize`` of its tensor, bit for bit (layout: no
  permutation of Qwen2's q/k rows, transposes, biases, the untied head);
- ``gguf.quants.dequantize`` equals a direct port of ggml's scalar ``dequantize_row_*`` (ggml-quants.c), so the
  numbers themselves are checked against the format's definition and not only against the library we call;
- logits equal transformers' own GGUF loading of the same file (PyTorch, CPU, float32).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from gguf import GGMLQuantizationType as QT  # noqa: E402

from remix_jax.models.gguf_file import read_gguf  # noqa: E402
from remix_jax.models.gguf_io import gguf_config, load_gguf  # noqa: E402
from remix_jax.models.llama import Decoder  # noqa: E402
from remix_jax.models.model_config import ModelConfig, ModelLoadError  # noqa: E402

D, F, HEADS, KV_HEADS, HEAD_DIM, VOCAB, LAYERS = 256, 512, 4, 2, 64, 320, 3
FFN_DOWN_TYPES = (QT.Q6_K, QT.Q4_K, QT.Q5_K)  # Q4_K and Q6_K as in the real file, Q5_K besides
RMS_EPS, THETA, CONTEXT = 1e-6, 1000000.0, 32768

# ---------------------------------------------------------------------------------------------------
# Writing quantised tensors.


def _random_k_blocks(rng, qtype: QT, n_blocks: int) -> np.ndarray:
    """Random K-quant blocks [n_blocks, type_size] uint8 whose float16 super-block scales are small and finite."""
    size = gguf.GGML_QUANT_SIZES[qtype][1]
    b = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    base = {QT.Q4_K: 1e-4, QT.Q5_K: 5e-5, QT.Q6_K: 2e-5}[qtype]
    d = (base * rng.uniform(0.5, 1.5, n_blocks)).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    if qtype == QT.Q6_K:  # ql[128] qh[64] scales[16] d
        b[:, 208:210] = d
    else:  # d dmin scales[12] (qh[32]) qs[128]
        dmin = (base * {QT.Q4_K: 7.5, QT.Q5_K: 15.0}[qtype] * rng.uniform(0.5, 1.5, n_blocks))
        b[:, 0:2] = d
        b[:, 2:4] = dmin.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return b


def _quantized(rng, qtype: QT, shape: tuple[int, int]) -> np.ndarray:
    """Bytes of a [rows, cols] (row-major, PyTorch layout) tensor of ``qtype``: [rows, cols / block * type_size]."""
    rows, cols = shape
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype in (QT.Q4_K, QT.Q5_K, QT.Q6_K):
        return _random_k_blocks(rng, qtype, rows * cols // block).reshape(rows, cols // block * size)
    return gguf.quants.quantize(rng.normal(0, 0.05, shape).astype(np.float32), qtype)


def _tensor_types(layer: int) -> dict[str, QT]:
    return {"attn_q.weight": QT.Q5_0, "attn_k.weight": QT.Q5_0, "attn_output.weight": QT.Q5_0,
            "attn_v.weight": QT.Q8_0 if layer % 2 == 0 else QT.Q5_0, "ffn_gate.weight": QT.Q5_0,
            "ffn_up.weight": QT.Q5_0, "ffn_down.weight": FFN_DOWN_TYPES[layer]}


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order (byte-level BPE's 256 base tokens)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


# A byte-level BPE vocabulary laid out like Qwen2's: byte tokens and merges, an ordinary text token "</s>",
# control tokens, then unused padding entries ([PADn], llama.cpp token type 5).
MERGES = ["Ġ t", "h e", "Ġt he", "1 2", "< /", "</ s", "</s >", "Ċ Ċ"]
CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}{{- '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def _vocab() -> tuple[list[str], list[int]]:
    tokens = _byte_chars() + ["".join(m.split(" ")) for m in MERGES]
    types = [1] * len(tokens) + [3] * len(CONTROL)
    tokens += CONTROL
    types += [5] * (VOCAB - len(tokens))
    tokens += [f"[PAD{i}]" for i in range(len(tokens), VOCAB)]
    return tokens, types


def _add_tokenizer(w) -> None:
    tokens, types = _vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))  # as Qwen2.5's GGUF files: bos = <|endoftext|>, not added
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)


def write_qwen2_gguf(path, tied: bool = False, seed: int = 0, vocab_key: bool = False):
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(THETA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    if vocab_key:
        w.add_vocab_size(VOCAB)
    # Like the real file: no {arch}.vocab_size, the vocabulary size is the token list's (transformers) or the
    # embedding's (ours).
    _add_tokenizer(w)

    def quant(name, qtype, shape):
        w.add_tensor(name, _quantized(rng, qtype, shape), raw_dtype=qtype)

    def f32(name, x):
        w.add_tensor(name, np.asarray(x, np.float32))

    quant("token_embd.weight", QT.Q5_0, (VOCAB, D))
    f32("output_norm.weight", rng.uniform(0.5, 1.5, D))
    if not tied:
        quant("output.weight", QT.Q8_0, (VOCAB, D))
    shapes = {"attn_q.weight": (HEADS * HEAD_DIM, D), "attn_k.weight": (KV_HEADS * HEAD_DIM, D),
              "attn_v.weight": (KV_HEADS * HEAD_DIM, D), "attn_output.weight": (D, HEADS * HEAD_DIM),
              "ffn_gate.weight": (F, D), "ffn_up.weight": (F, D), "ffn_down.weight": (D, F)}
    for i in range(LAYERS):
        f32(f"blk.{i}.attn_norm.weight", rng.uniform(0.5, 1.5, D))
        f32(f"blk.{i}.ffn_norm.weight", rng.uniform(0.5, 1.5, D))
        for name, qtype in _tensor_types(i).items():
            quant(f"blk.{i}.{name}", qtype, shapes[name])
        for p, n in (("q", HEADS), ("k", KV_HEADS), ("v", KV_HEADS)):
            f32(f"blk.{i}.attn_{p}.bias", rng.normal(0, 0.5, n * HEAD_DIM))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def qwen_file(tmp_path_factory):
    return write_qwen2_gguf(tmp_path_factory.mktemp("qwen2") / "tiny-qwen2-q4_k_m.gguf")


@pytest.fixture(scope="module")
def qwen_loaded(qwen_file):
    return load_gguf(qwen_file)


def _tensors(path) -> dict:
    return {t.name: t for t in gguf.GGUFReader(str(path)).tensors}


# ---------------------------------------------------------------------------------------------------
# ggml's scalar reference dequantisation (ggml-quants.c, dequantize_row_*), one block at a time.


def _f16(b: np.ndarray) -> np.float32:
    return np.float32(b[:2].copy().view(np.float16)[0])


def _scale_min_k4(j: int, q: np.ndarray) -> tuple[int, int]:
    if j < 4:
        return int(q[j] & 63), int(q[j + 4] & 63)
    return int((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)), int((q[j + 4] >> 4) | ((q[j] >> 6) << 4))


def _ref_block(qtype: QT, b: np.ndarray) -> np.ndarray:
    y = np.zeros(gguf.GGML_QUANT_SIZES[qtype][0], np.float32)
    if qtype == QT.Q8_0:
        d = _f16(b)
        for j in range(32):
            y[j] = d * np.float32(np.int8(b[2 + j].view(np.int8)))
    elif qtype == QT.Q5_0:
        d, qh, qs = _f16(b), int.from_bytes(b[2:6].tobytes(), "little"), b[6:22]
        for j in range(16):
            xh0, xh1 = ((qh >> j) << 4) & 0x10, (qh >> (j + 12)) & 0x10
            y[j] = np.float32(((int(qs[j]) & 0x0F) | xh0) - 16) * d
            y[j + 16] = np.float32(((int(qs[j]) >> 4) | xh1) - 16) * d
    elif qtype in (QT.Q4_K, QT.Q5_K):
        d, dmin, scales = _f16(b[0:2]), _f16(b[2:4]), b[4:16]
        qh, ql = (b[16:48], b[48:176]) if qtype == QT.Q5_K else (None, b[16:144])
        out, s, u1, u2 = 0, 0, 1, 2
        for j in range(0, 256, 64):
            sc, m = _scale_min_k4(s, scales)
            d1, m1 = d * np.float32(sc), dmin * np.float32(m)
            sc, m = _scale_min_k4(s + 1, scales)
            d2, m2 = d * np.float32(sc), dmin * np.float32(m)
            q = ql[j // 2: j // 2 + 32]
            for l in range(32):  # noqa: E741
                hi = 16 if qh is not None and qh[l] & u1 else 0
                y[out + l] = d1 * np.float32((int(q[l]) & 0xF) + hi) - m1
            for l in range(32):  # noqa: E741
                hi = 16 if qh is not None and qh[l] & u2 else 0
                y[out + 32 + l] = d2 * np.float32((int(q[l]) >> 4) + hi) - m2
            out, s, u1, u2 = out + 64, s + 2, u1 << 2, u2 << 2
    elif qtype == QT.Q6_K:
        d, sc = _f16(b[208:210]), b[192:208].view(np.int8)
        for n in range(2):
            ql, qh, s, o = b[64 * n: 64 * n + 64], b[128 + 32 * n: 160 + 32 * n], sc[8 * n:], 128 * n
            for l in range(32):  # noqa: E741
                i = l // 16
                q1 = ((int(ql[l]) & 0xF) | (((int(qh[l]) >> 0) & 3) << 4)) - 32
                q2 = ((int(ql[l + 32]) & 0xF) | (((int(qh[l]) >> 2) & 3) << 4)) - 32
                q3 = ((int(ql[l]) >> 4) | (((int(qh[l]) >> 4) & 3) << 4)) - 32
                q4 = ((int(ql[l + 32]) >> 4) | (((int(qh[l]) >> 6) & 3) << 4)) - 32
                y[o + l] = d * np.float32(s[i]) * np.float32(q1)
                y[o + l + 32] = d * np.float32(s[i + 2]) * np.float32(q2)
                y[o + l + 64] = d * np.float32(s[i + 4]) * np.float32(q3)
                y[o + l + 96] = d * np.float32(s[i + 6]) * np.float32(q4)
    else:
        raise AssertionError(qtype)
    return y


# ---------------------------------------------------------------------------------------------------


def test_file_uses_the_real_files_tensor_types(qwen_file):
    types = {t.tensor_type for t in _tensors(qwen_file).values()}
    assert types == {QT.F32, QT.Q5_0, QT.Q8_0, QT.Q4_K, QT.Q6_K, QT.Q5_K}


def test_qwen2_metadata_to_model_config(qwen_file, tmp_path):
    reader = read_gguf(qwen_file)
    cfg = gguf_config(reader, str(qwen_file))
    assert cfg == ModelConfig(
        vocab_size=VOCAB, hidden_size=D, intermediate_size=F, num_layers=LAYERS, num_heads=HEADS,
        num_kv_heads=KV_HEADS, head_dim=HEAD_DIM, rms_norm_eps=float(np.float32(RMS_EPS)), rope_theta=THETA,
        rope_scaling=None, max_position_embeddings=CONTEXT, tie_embeddings=False, attention_bias=True,
        model_type="qwen2")
    assert gguf_config(reader, str(qwen_file), dtype="bfloat16").dtype == "bfloat16"
    tied = write_qwen2_gguf(tmp_path / "tied.gguf", tied=True, vocab_key=True)
    assert gguf_config(read_gguf(tied), str(tied)) == cfg.replace(tie_embeddings=True)


def test_dequantized_parameters_equal_gguf_dequantize(qwen_file, qwen_loaded):
    cfg, params = qwen_loaded
    t = _tensors(qwen_file)

    def deq(name):  # row-major [out, in] float32
        x = t[name]
        return gguf.quants.dequantize(x.data, x.tensor_type).reshape(tuple(int(s) for s in reversed(x.shape)))

    def same(got, want):
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), want)

    same(params["embed"]["embedding"], deq("token_embd.weight"))
    same(params["final_norm"]["scale"], deq("output_norm.weight"))
    same(params["lm_head"], deq("output.weight").T)  # the untied Q8_0 head
    lay = params["layers"]
    for i in range(LAYERS):
        same(lay["input_norm"]["scale"][i], deq(f"blk.{i}.attn_norm.weight"))
        same(lay["post_attn_norm"]["scale"][i], deq(f"blk.{i}.ffn_norm.weight"))
        for p in "qkv":  # Qwen2 q/k rows are stored unpermuted: no llama.cpp RoPE permutation to undo
            same(lay["attn"][f"{p}_proj"]["kernel"][i], deq(f"blk.{i}.attn_{p}.weight").T)
            same(lay["attn"][f"{p}_proj"]["bias"][i], deq(f"blk.{i}.attn_{p}.bias"))
        same(lay["attn"]["o_proj"]["kernel"][i], deq(f"blk.{i}.attn_output.weight").T)
        for p in ("gate", "up", "down"):
            same(lay["mlp"][f"{p}_proj"]["kernel"][i], deq(f"blk.{i}.ffn_{p}.weight").T)
    assert np.abs(np.asarray(lay["mlp"]["down_proj"]["kernel"])).max() > 0.01  # the K-quant blocks are not zeros
    assert set(lay["attn"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}


@pytest.mark.parametrize("qtype", [QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q5_0, QT.Q8_0])
def test_gguf_dequantize_matches_ggml_reference(qwen_file, qtype):
    t = _tensors(qwen_file)
    name = {QT.Q6_K: "blk.0.ffn_down.weight", QT.Q4_K: "blk.1.ffn_down.weight", QT.Q5_K: "blk.2.ffn_down.weight",
            QT.Q5_0: "blk.0.attn_q.weight", QT.Q8_0: "output.weight"}[qtype]
    x = t[name]
    assert x.tensor_type == qtype
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = np.asarray(x.data).reshape(-1, size)[:6]  # six blocks: 1536 (K) or 192 values, each by hand
    got = gguf.quants.dequantize(np.ascontiguousarray(blocks), qtype).reshape(-1)
    want = np.concatenate([_ref_block(qtype, b) for b in blocks])
    assert np.isfinite(want).all() and np.abs(want).max() > 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_match_transformers_gguf_loading(qwen_file, qwen_loaded, tmp_path, tied):
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF models
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    path = write_qwen2_gguf(tmp_path / "tied.gguf", tied=True) if tied else qwen_file
    cfg, params = load_gguf(path) if tied else qwen_loaded
    assert cfg.tie_embeddings == tied and ("lm_head" in params) != tied
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    assert ref.config.model_type == "qwen2" and ref.config.tie_word_embeddings == tied
    tokens = np.random.default_rng(3).integers(0, VOCAB, (2, 24))
    with torch.no_grad():
        want = ref(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(Decoder(cfg).apply({"params": params}, jnp.asarray(tokens))[0])
    assert np.abs(want).max() > 1.0  # logits of some size, so the tolerance below means something
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_qwen2_without_biases_is_refused(tmp_path, qwen_file):
    """A qwen2 file must carry the q/k/v biases the architecture has; their absence names the tensor."""
    r = gguf.GGUFReader(str(qwen_file))
    w = gguf.GGUFWriter(str(tmp_path / "nobias.gguf"), "qwen2")
    for key in ("block_count", "context_length", "embedding_length", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv"):
        w.add_uint32(f"qwen2.{key}", int(r.fields[f"qwen2.{key}"].contents()))
    for t in r.tensors:
        if t.name != "blk.1.attn_k.bias":
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError, match=r"nobias.gguf: tensor 'blk.1.attn_k.bias' is missing"):
        load_gguf(tmp_path / "nobias.gguf")


def test_bfloat16_parameters(qwen_loaded, qwen_file):
    _, params = qwen_loaded
    cfg16, p16 = load_gguf(qwen_file, param_dtype="bfloat16")
    assert cfg16.param_dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))
    np.testing.assert_array_equal(np.asarray(p16["lm_head"]), np.asarray(params["lm_head"].astype(jnp.bfloat16)))


# ---------------------------------------------------------------------------------------------------
# The tokenizer of a qwen2 GGUF (pre-tokenizer "qwen2", control tokens, chat template, bos/eos).

TEXTS = ("the 12 cats", " the the\n\nthe", "x = 123 + 4.5e6", "<s>struck</s> <|im_end|>", "héllo 🙂\r\n\t ",
         "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>", "")


@pytest.fixture(scope="module")
def qwen_tokenizers(qwen_file):
    from transformers import AutoTokenizer

    from remix_jax.models.tokenizer import load_tokenizer

    return load_tokenizer(qwen_file), AutoTokenizer.from_pretrained(str(qwen_file.parent), gguf_file=qwen_file.name)


def test_qwen2_tokenizer_ids(qwen_tokenizers):
    ours, ref = qwen_tokenizers
    tokens, _ = _vocab()
    ids = {t: i for i, t in enumerate(tokens)}
    # Qwen2's pre-tokenizer splits digits one by one (the "1 2" merge never applies), keeps a leading space with
    # a word, splits punctuation from letters ("</" "s" ">"), and matches control tokens whole.
    assert ours.encode("the 12") == [ids["t"], ids["he"], ids["Ġ"], ids["1"], ids["2"]]
    assert ours.encode(" the\n\n") == [ids["Ġthe"], ids["ĊĊ"]]
    assert ours.encode("a</s><|im_end|>") == [ids["a"], ids["</"], ids["s"], ids[">"], ids["<|im_end|>"]]
    assert ours.decode([ids["</s>"], ids["<|im_end|>"]]) == "</s><|im_end|>"
    for text in TEXTS:
        assert ours.encode(text) == ref.encode(text), text
        assert ours.decode(ours.encode(text)) == text


def test_qwen2_tokenizer_special_tokens_and_chat(qwen_tokenizers):
    from remix_jax.models.tokenizer import encode_prompt, stop_token_ids

    ours, ref = qwen_tokenizers
    tokens, _ = _vocab()
    eot, start, end = (tokens.index(t) for t in CONTROL)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (eot, end, eot)
    assert ours.encode("Hi") == ref.encode("Hi") == [tokens.index("H"), tokens.index("i")]  # no BOS added
    # End of generation: <|im_end|> and <|endoftext|>, never the ordinary text token "</s>".
    assert stop_token_ids(ours) == (eot, end)
    assert tokens.index("</s>") not in stop_token_ids(ours)
    ids = encode_prompt(ours, "Hi", chat=True)
    assert ours.decode(ids) == ("<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                "<|im_start|>assistant\n")
    assert ids.count(start) == 3 and ids.count(end) == 2
    msgs = [{"role": "user", "content": "Hi"}]
    rendered = ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False, chat_template=CHAT_TEMPLATE)
    assert ids == ref.encode(rendered, add_special_tokens=False)
    assert encode_prompt(ours, "Hi", chat=True, system="Be brief.") == ref.encode(
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
