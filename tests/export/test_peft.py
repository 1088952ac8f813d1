"""PEFT adapters both ways (LoRA, rsLoRA, DoRA): our model with adapters vs peft loading our export onto our HF
export of the base vs the merged export in plain transformers; PEFT directories written by peft itself imported
as a run's initial adapter; clear errors for directories that do not fit the run."""

import json

import jax
import numpy as np
import pytest

from tests.export.helpers import adapted, our_logits, random_trainable, require_peft, torch_logits

peft = require_peft()

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from remix_jax.adapters import init_adapter_variables  # noqa: E402
from remix_jax.adapters.peft_io import PeftFormatError, load_peft_adapter, save_peft_adapter  # noqa: E402
from remix_jax.export.merge import merge_adapter  # noqa: E402
from remix_jax.models.hf_io import save_hf_checkpoint  # noqa: E402

FFN = ("gate_proj", "up_proj", "down_proj")
ALL = ("q_proj", "k_proj", "v_proj", "o_proj") + FFN
CASES = {  # name -> (model kind, adapter config)
    "lora-llama-all": ("llama", dict(method="lora", targets=ALL, rank=4, alpha=8.0)),
    "rslora-qwen2": ("qwen2", dict(method="rslora", targets=("q_proj", "v_proj", "up_proj", "down_proj"),
                                   rank=4, alpha=8.0)),
    "dora-tied": ("tied", dict(method="dora", targets=("k_proj", "o_proj", "gate_proj", "down_proj"),
                               rank=4, alpha=16.0)),
    "dora-rslora-qwen2": ("qwen2", dict(method="dora", omega="rslora", targets=ALL, rank=8, alpha=8.0)),
}
TOL = 2e-5  # float32; the logits here are O(1) and the adapters change them by O(1)


def _peft_model(base_dir, adapter_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir, attn_implementation="eager")
    return peft.PeftModel.from_pretrained(model, adapter_dir).float().eval()


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tiny_base, tmp_path_factory):
    """Our adapted model with random factors, exported as our HF base + a PEFT adapter + a merged model."""
    kind, kw = CASES[request.param]
    _, cfg, base = tiny_base(kind)
    acfg, model = adapted(cfg, **kw)
    trainable = random_trainable(model, seed=1)
    root = tmp_path_factory.mktemp(request.param)
    save_hf_checkpoint(root / "base", cfg, base)
    save_peft_adapter(root / "peft", trainable["adapter"], acfg, cfg.num_layers, base, str(root / "base"))
    save_hf_checkpoint(root / "merged", cfg, merge_adapter(base, trainable["adapter"], acfg))
    return dict(name=request.param, cfg=cfg, base=base, acfg=acfg, model=model, trainable=trainable, root=root)


def test_peft_and_merged_exports_match_our_logits(exported):
    e = exported
    ours = our_logits(e["model"], e["base"], e["trainable"])
    plain = our_logits(e["model"], e["base"], jax.tree.map(np.zeros_like, e["trainable"]))
    assert np.abs(ours - plain).max() > 0.1  # the adapters matter: a dropped or mis-scaled one would show
    via_peft = torch_logits(_peft_model(e["root"] / "base", e["root"] / "peft"))
    np.testing.assert_allclose(via_peft, ours, atol=TOL, rtol=0)
    merged = transformers.AutoModelForCausalLM.from_pretrained(e["root"] / "merged", attn_implementation="eager")
    np.testing.assert_allclose(torch_logits(merged.float().eval()), ours, atol=TOL, rtol=0)


def test_peft_export_layout(exported):
    e = exported
    acfg, cfg = e["acfg"], e["cfg"]
    raw = json.loads((e["root"] / "peft" / "adapter_config.json").read_text())
    assert raw["peft_type"] == "LORA" and raw["r"] == acfg.rank and raw["lora_alpha"] == acfg.alpha
    assert raw["use_dora"] == (acfg.method == "dora")
    assert raw["use_rslora"] == (acfg.method == "rslora" or acfg.omega == "rslora")
    assert raw["target_modules"] == list(acfg.targets)
    assert raw["base_model_name_or_path"] == str(e["root"] / "base")
    tensors = load_file(e["root"] / "peft" / "adapter_model.safetensors")
    shapes = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
              "gate_proj": (64, 96), "up_proj": (64, 96), "down_proj": (96, 64)}  # (d_in, d_out)
    want = {}
    for i in range(cfg.num_layers):
        for name in acfg.targets:
            parent = "mlp" if name in FFN else "self_attn"
            key = f"base_model.model.model.layers.{i}.{parent}.{name}"
            d_in, d_out = shapes[name]
            want[f"{key}.lora_A.weight"] = (acfg.rank, d_in)
            want[f"{key}.lora_B.weight"] = (d_out, acfg.rank)
            if acfg.method == "dora":
                want[f"{key}.lora_magnitude_vector"] = (d_out,)
    assert {k: v.shape for k, v in tensors.items()} == want
    # Block 1's down_proj factors are our stacked factors' slice 1, transposed.
    ours = e["trainable"]["adapter"]["layers"]["mlp"]["down_proj"]
    key = "base_model.model.model.layers.1.mlp.down_proj"
    np.testing.assert_array_equal(tensors[f"{key}.lora_A.weight"], ours["lora_a"][1].T)
    np.testing.assert_array_equal(tensors[f"{key}.lora_B.weight"], ours["lora_b"][1].T)


def test_round_trip_through_peft(exported):
    e = exported
    back = load_peft_adapter(e["root"] / "peft", e["acfg"], e["cfg"].num_layers, e["base"])
    template = init_adapter_variables(e["model"], jax.random.key(0))
    assert jax.tree.structure(back) == jax.tree.structure(template)
    jax.tree.map(lambda t, x: (t.shape, t.dtype) == (x.shape, x.dtype) or pytest.fail(f"{t.shape} vs {x.shape}"),
                 template, back)
    for path, want in jax.tree_util.tree_leaves_with_path(e["trainable"]["adapter"]):
        got = back["adapter"]
        for p in path:
            got = got[p.key]
        # A and B are copied; DoRA's magnitude goes through m = ||W||_c + delta and back.
        np.testing.assert_allclose(got, want, atol=1e-6 if "magnitude" in jax.tree_util.keystr(path) else 0, rtol=0)


# ------------------------------------------------------------------------- adapters written by peft itself

PEFT_WRITTEN = {  # name -> (model kind, our adapter config, peft LoraConfig kwargs)
    "lora": ("llama", dict(method="lora", targets=("q_proj", "v_proj", "down_proj"), rank=4, alpha=16.0),
             dict(target_modules=["q_proj", "v_proj", "down_proj"])),
    "rslora-regex": ("qwen2", dict(method="rslora", targets=("k_proj", "up_proj"), rank=8, alpha=4.0),
                     dict(target_modules=r".*\.(k_proj|up_proj)", use_rslora=True)),
    "dora-all-linear": ("tied", dict(method="dora", targets=ALL, rank=4, alpha=8.0),
                        dict(target_modules="all-linear", use_dora=True)),
}


@pytest.mark.parametrize("name", list(PEFT_WRITTEN))
def test_import_reproduces_peft_logits(name, tiny_base, tmp_path):
    kind, kw, peft_kw = PEFT_WRITTEN[name]
    hf_dir, cfg, base = tiny_base(kind)
    torch.manual_seed(3)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=kw["rank"], lora_alpha=kw["alpha"], init_lora_weights=False,
                                                 **peft_kw))
    with torch.no_grad():  # trained-looking magnitudes: not the base's column norms
        for pname, p in pm.named_parameters():
            if "lora_magnitude_vector" in pname:
                p.mul_(1 + 0.1 * torch.randn_like(p))
    pm.save_pretrained(tmp_path / "adapter")
    want = torch_logits(pm.float().eval())
    acfg, model = adapted(cfg, **kw)
    trainable = load_peft_adapter(tmp_path / "adapter", acfg, cfg.num_layers, base)
    got = our_logits(model, base, trainable)
    assert np.abs(want - torch_logits(transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval())).max() > 0.05
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


# ------------------------------------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def good_dir(tiny_base, tmp_path_factory):
    _, cfg, base = tiny_base("llama")
    acfg, model = adapted(cfg, method="dora", targets=("q_proj", "down_proj"), rank=4, alpha=8.0)
    d = tmp_path_factory.mktemp("good") / "adapter"
    save_peft_adapter(d, random_trainable(model)["adapter"], acfg, cfg.num_layers, base)
    return d, cfg, base, acfg


def _copy(src, dst, config_edit=None, tensors_edit=None):
    dst.mkdir()
    raw = json.loads((src / "adapter_config.json").read_text())
    if config_edit:
        config_edit(raw)
    (dst / "adapter_config.json").write_text(json.dumps(raw))
    tensors = load_file(src / "adapter_model.safetensors")
    if tensors_edit:
        tensors_edit(tensors)
    save_file(tensors, dst / "adapter_model.safetensors")
    return dst


LAYER0_Q = "base_model.model.model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize("edit,field,message", [
    (lambda c: c.update(peft_type="LOHA"), "peft_type", "only 'LORA'"),
    (lambda c: c.update(peft_type="XLORA"), "peft_type", "only 'LORA'"),
    (lambda c: c.update(target_modules=["q_proj", "v_proj", "down_proj"]), "target_modules", "'v_proj'"),
    (lambda c: c.update(target_modules=["q_proj", "down_proj", "lm_head"]), "target_modules", "lm_head"),
    (lambda c: c.update(target_modules=r".*layers\.0\..*(q_proj|down_proj)"), "target_modules", "some blocks"),
    (lambda c: c.update(r=8), "r", "adapter.rank is 4"),
    (lambda c: c.update(lora_alpha=16), "lora_alpha", "adapter.alpha is 8.0"),
    (lambda c: c.update(use_dora=False), "use_dora", "'dora'"),
    (lambda c: c.update(use_rslora=True), "use_rslora", "alpha/r"),
    (lambda c: c.update(rank_pattern={"q_proj": 8}), "rank_pattern", "per-module ranks"),
    (lambda c: c.update(bias="all"), "bias", "trained biases"),
    (lambda c: c.update(layers_to_transform=[0]), "layers_to_transform", "every one of the 2 blocks"),
])
def test_bad_config_names_file_and_field(good_dir, tmp_path, edit, field, message):
    src, cfg, base, acfg = good_dir
    d = _copy(src, tmp_path / "bad", config_edit=edit)
    with pytest.raises(PeftFormatError) as e:
        load_peft_adapter(d, acfg, cfg.num_layers, base)
    assert str(d / "adapter_config.json") in str(e.value)
    assert f"field {field!r}" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.pop(f"{LAYER0_Q}.lora_B.weight"), f"tensor {LAYER0_Q}.lora_B.weight is missing"),
    (lambda t: t.pop(f"{LAYER0_Q}.lora_magnitude_vector"), f"tensor {LAYER0_Q}.lora_magnitude_vector is missing"),
    (lambda t: t.update({f"{LAYER0_Q}.lora_A.weight": np.zeros((4, 32), np.float32)}),
     f"tensor {LAYER0_Q}.lora_A.weight has shape (4, 32), the run expects (4, 64)"),
    (lambda t: t.update({"base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight":
                         np.zeros((4, 64), np.float32)}), "unexpected tensor(s)"),
    (lambda t: t[f"{LAYER0_Q}.lora_A.weight"].__setitem__((0, 0), np.nan), "non-finite"),
])
def test_bad_tensors_name_file_and_tensor(good_dir, tmp_path, edit, message):
    src, cfg, base, acfg = good_dir
    d = _copy(src, tmp_path / "bad", tensors_edit=edit)
    with pytest.raises(PeftFormatError) as e:
        load_peft_adapter(d, acfg, cfg.num_layers, base)
    assert str(d / "adapter_model.safetensors") in str(e.value) and message in str(e.value)


def test_missing_or_damaged_files(good_dir, tmp_path):
    src, cfg, base, acfg = good_dir
    d = _copy(src, tmp_path / "no_weights")
    (d / "adapter_model.safetensors").unlink()
    with pytest.raises(PeftFormatError, match="adapter_model.safetensors: missing"):
        load_peft_adapter(d, acfg, cfg.num_layers, base)
    d = _copy(src, tmp_path / "no_config")
    (d / "adapter_config.json").unlink()
    with pytest.raises(PeftFormatError, match="adapter_config.json: missing"):
        load_peft_adapter(d, acfg, cfg.num_layers, base)
    d = _copy(src, tmp_path / "bad_json")
    (d / "adapter_config.json").write_text("{not json")
    with pytest.raises(PeftFormatError, match="adapter_config.json: not valid JSON"):
        load_peft_adapter(d, acfg, cfg.num_layers, base)
    d = _copy(src, tmp_path / "truncated")
    data = (d / "adapter_model.safetensors").read_bytes()
    (d / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PeftFormatError, match="adapter_model.safetensors: cannot read"):
        load_peft_adapter(d, acfg, cfg.num_layers, base)


def test_mixture_run_cannot_start_from_a_lora(good_dir, tiny_base):
    src, cfg, base, _ = good_dir
    acfg, _ = adapted(cfg, method="remix", targets=("q_proj", "down_proj"), rank=4, alpha=8.0)
    with pytest.raises(PeftFormatError, match="adapter.method is 'remix'"):
        load_peft_adapter(src, acfg, cfg.num_layers, base)
    with pytest.raises(PeftFormatError, match="is a mixture"):
        save_peft_adapter(src.parent / "x", {}, acfg, cfg.num_layers, base)
