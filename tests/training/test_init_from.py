"""adapter.init_from: a PEFT LoRA directory is the adapter at step 0 of a new run (the initial state computes what
peft computes with that directory on the same base), a resumed run takes its checkpoint and never opens the
directory, the files' fingerprint is recorded, and a directory or method that does not fit the config fails with
the key, file and field before the model loads."""

import hashlib
import json
import shutil

import jax
import numpy as np
import pytest

from remix_jax import rundir
from remix_jax.adapters import AdapterConfig, AdapterConfigError
from remix_jax.adapters.peft_io import PeftFormatError, save_peft_adapter
from remix_jax.run_config import ConfigError, check_config, default_config, eval_config, split_config, validate_config
from remix_jax.training import checkpointing, loop
from tests.tiny_run import byte_tokenizer, cli, stderr_lines
from tests.training.conftest import perturbed, tiny_config

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _mesh():
    return jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _lora_config(peft_dir="", **train):
    """configs/smoke.py:lora (random:tiny, rank 4, alpha 8, FFN targets, synthetic data) starting from peft_dir."""
    c = tiny_config("lora", num_samples=1, **train)
    c.adapter.init_from = str(peft_dir)
    return c


@pytest.fixture(scope="module")
def tiny_peft(tmp_path_factory):
    """A PEFT directory written from random non-zero factors of configs/smoke.py:lora's adapter on random:tiny."""
    bundle = loop.build_model_bundle(_lora_config())
    adapter = jax.device_get(perturbed(bundle.trainable, seed=5, scale=1.0))["adapter"]
    d = tmp_path_factory.mktemp("peft") / "adapter"
    save_peft_adapter(d, adapter, bundle.adapter_cfg, bundle.model_cfg.num_layers, bundle.base)
    return d, adapter


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------- the initial adapter

PEFT_CASES = {  # name -> our adapter config (on the tiny Hugging Face llama of tests/export/helpers.py)
    "lora": dict(method="lora", targets=("q_proj", "v_proj", "down_proj"), rank=4, alpha=8.0),
    "dora-rslora": dict(method="dora", omega="rslora", targets=("k_proj", "o_proj", "gate_proj", "up_proj"),
                        rank=4, alpha=16.0),
}


@pytest.mark.parametrize("name", list(PEFT_CASES))
def test_initial_state_computes_what_peft_computes(name, tmp_path):
    """The run's step-0 state (and what its step-0 evaluation sees) gives the logits of peft loading the same
    directory onto the same base in PyTorch."""
    from tests.export.helpers import adapted, our_logits, random_trainable, require_peft, tiny_checkpoint, torch_logits

    peft = require_peft()
    import transformers

    kw = PEFT_CASES[name]
    hf_dir, cfg, base = tiny_checkpoint("llama", tmp_path)
    byte_tokenizer().save_pretrained(str(hf_dir))  # a run loads the model's tokenizer (unused: synthetic data)
    acfg, model = adapted(cfg, **kw)
    peft_dir = tmp_path / "peft"
    save_peft_adapter(peft_dir, random_trainable(model, seed=2)["adapter"], acfg, cfg.num_layers, base, str(hf_dir))

    config = tiny_config(kw["method"], num_samples=1)
    config.model.path = str(hf_dir)
    for k, v in kw.items():
        config.adapter[k] = v
    config.adapter.init_from = str(peft_dir)
    seen, lines = {}, []
    s = loop.setup(config, str(tmp_path / "run"), mesh=_mesh(), log_fn=lines.append,
                   make_eval_fn=lambda bundle: seen.update(trainable=bundle.trainable))
    trainable = jax.device_get(s.state.trainable)
    got = our_logits(s.bundle.model, jax.device_get(s.state.base), trainable)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager")
    want = torch_logits(peft.PeftModel.from_pretrained(hf, peft_dir).float().eval())
    fresh = our_logits(s.bundle.model, base, jax.device_get(loop.build_model_bundle(config).trainable))
    assert np.abs(want - fresh).max() > 0.05  # the imported adapter matters: a fresh start would fail below
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(seen["trainable"]), trainable)
    assert int(s.state.step) == 0 and s.ckpt.all_steps() == []
    s.ckpt.close()
    assert lines == [f"adapter initialised from {peft_dir} ({WEIGHTS} sha256 {_sha256(peft_dir / WEIGHTS)[:12]})"]


def test_fingerprint_of_the_files(tiny_peft, tmp_path):
    d, _ = tiny_peft
    s = loop.setup(_lora_config(d), str(tmp_path / "run"), mesh=_mesh(), log_fn=lambda m: None)
    s.ckpt.close()
    rec = s.init_record
    assert rec["settings"] == {"init_from": str(d.absolute())}
    assert sorted(rec["files"]) == [CONFIG, WEIGHTS]
    for name in (CONFIG, WEIGHTS):
        f = rec["files"][name]
        assert (f["path"], f["size"], f["sha256"]) == (str(d / name), (d / name).stat().st_size, _sha256(d / name))
    want = hashlib.sha256(json.dumps({"settings": rec["settings"], "sha256": {n: _sha256(d / n) for n in
                                      (CONFIG, WEIGHTS)}}, sort_keys=True).encode()).hexdigest()
    assert rec["digest"] == want


# ------------------------------------------------------------------------------------------- resuming

def test_resumed_run_takes_its_checkpoint_and_never_reads_the_directory(tiny_peft, tmp_path):
    src, adapter = tiny_peft
    d = _copy(src, tmp_path / "adapter")
    sha = _sha256(d / WEIGHTS)
    config = _lora_config(d, num_steps=2, checkpoint_every=1)
    config.optimizer.warmup_steps = 0  # the first step moves every factor by about adapter_lr (Adam)
    wd = tmp_path / "run"
    first = []
    part = loop.train(config, str(wd), mesh=_mesh(), stop_after=1, log_fn=first.append)
    assert part["step"] == 1 and any(x.startswith(f"adapter initialised from {d}") for x in first)

    shutil.rmtree(d)  # a resumed run does not open it: reading it now would fail
    second = []
    s = loop.setup(config, str(wd), mesh=_mesh(), log_fn=second.append)
    assert s.init_record is None and loop.resume(s, second.append) == 1
    assert s.init_record["files"][WEIGHTS]["sha256"] == sha  # from the checkpoint's metadata
    resumed = jax.device_get(s.state.trainable)["adapter"]["layers"]["mlp"]
    s.ckpt.close()
    # The checkpoint's factors: one step of about adapter_lr away from the PEFT ones (B = 0 after a fresh init).
    for name in ("gate_proj", "up_proj", "down_proj"):
        for part_name in ("lora_a", "lora_b"):
            moved = np.abs(resumed[name][part_name] - adapter["layers"]["mlp"][name][part_name]).max()
            assert 0 < moved < 3 * config.optimizer.adapter_lr, (name, part_name, moved)
    rest = loop.train(config, str(wd), mesh=_mesh(), log_fn=second.append)
    assert rest["step"] == 2 and not any("adapter initialised" in x for x in second)
    # The fingerprint taken at step 0 is carried by the checkpoints into the export.
    _, desc = checkpointing.load_exported_adapters(str(wd / "export"))
    assert desc["init_from"]["files"][WEIGHTS]["sha256"] == sha
    assert desc["adapter"]["init_from"] == str(d)


def test_check_config_reads_the_directory_only_for_a_fresh_run(tmp_path):
    config, ev = split_config(_lora_config(tmp_path / "gone"))
    assert check_config(config, ev, num_devices=1, fresh=False) == []
    with pytest.raises(ConfigError) as e:
        check_config(config, ev, num_devices=1, fresh=True)
    assert str(e.value) == (f"invalid config:\n  adapter.init_from: {str(tmp_path / 'gone')!r} is not a folder (a "
                            f"PEFT adapter directory: {CONFIG}, {WEIGHTS})")


def test_recorded_path_and_old_records(tmp_path):
    """The path is part of the run's config: an old record without the key reruns unchanged at the default; a
    path set on a run recorded without it is an adapter change."""
    new = default_config()
    new.eval = eval_config()
    new = rundir.config_dict(new)
    old = json.loads(json.dumps(new))
    del old["adapter"]["init_from"]
    (tmp_path / rundir.CONFIG).write_text(json.dumps(old))
    assert rundir.plan_rerun(str(tmp_path), new).changes == []
    new["adapter"]["init_from"] = "exports/lora_peft"
    with pytest.raises(rundir.RunConfigError, match=r'adapter\.init_from: <absent> -> "exports/lora_peft"'):
        rundir.plan_rerun(str(tmp_path), new)


def test_evaluate_does_not_report_init_from_as_drift(tmp_path):
    """Evaluating a run scores its trained adapters: the PEFT directory it started from (or an old record without
    the key) is no difference between the evaluation config and the run; other adapter keys still are."""
    from remix_jax.training.evaluate_run import _config_drift

    config = tiny_config("lora", num_samples=1)
    record = rundir.config_dict(config)
    record["adapter"]["init_from"] = "exports/lora_peft"
    (tmp_path / rundir.CONFIG).write_text(json.dumps(record))
    assert _config_drift(config, str(tmp_path)) == []
    del record["adapter"]["init_from"]
    record["adapter"]["rank"] = 8
    (tmp_path / rundir.CONFIG).write_text(json.dumps(record))
    assert _config_drift(config, str(tmp_path)) == ["adapter.rank: 8 -> 4"]


# ------------------------------------------------------------------------------------------- bad input

def test_mixture_method_is_refused_with_the_key():
    with pytest.raises(AdapterConfigError, match=r"adapter config key 'init_from': .* not method 'remix'"):
        AdapterConfig(method="remix", init_from="exports/lora_peft")
    c, _ = split_config(tiny_config("remix"))
    c.adapter.init_from = "exports/lora_peft"
    with pytest.raises(ConfigError) as e:
        validate_config(c, check_paths=False)
    assert str(e.value) == ("invalid config:\n  adapter config key 'init_from': a PEFT LoRA adapter holds one "
                            "adapter per projection: it can initialise lora, rslora, dora, not method 'remix'")


def _fail_if_loaded(monkeypatch):
    def load(*a, **kw):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loop, "build_model_bundle", load)


@pytest.mark.parametrize("edit,key,message", [
    (lambda c: c.update(r=8), "r", "field 'r' is 8, the run's adapter.rank is 4"),
    (lambda c: c.update(target_modules=["gate_proj", "up_proj"]), "target_modules",
     "field 'target_modules' adapts ['gate_proj', 'up_proj'], the run's adapter.targets are "
     "['gate_proj', 'up_proj', 'down_proj']"),
    (lambda c: c.update(use_dora=True), "use_dora", "field 'use_dora' is True, the run's adapter.method is 'lora'"),
    (lambda c: c.update(use_rslora=True), "use_rslora", "field 'use_rslora' is True, but the run's adapter (method "
     "'lora', omega 'lora') scales by alpha/r"),
    (lambda c: c.update(peft_type="LOHA"), "peft_type", "field 'peft_type' is 'LOHA'; only 'LORA' adapters (LoRA, "
     "rsLoRA, DoRA) can be imported"),
])
def test_config_that_does_not_fit_fails_before_the_model_loads(tiny_peft, tmp_path, monkeypatch, edit, key,
                                                                 message):
    d = _copy(tiny_peft[0], tmp_path / "adapter")
    raw = json.loads((d / CONFIG).read_text())
    edit(raw)
    (d / CONFIG).write_text(json.dumps(raw))
    _fail_if_loaded(monkeypatch)
    with pytest.raises(ConfigError) as e:
        loop.setup(_lora_config(d), str(tmp_path / "run"), mesh=_mesh(), log_fn=lambda m: None)
    assert str(e.value) == f"invalid config:\n  adapter.init_from: {d / CONFIG}: {message}"
    assert f"field {key!r}" in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_damaged_tensor_names_key_file_and_tensor(tiny_peft, tmp_path):
    """Tensors are read once the model is built: a non-finite value fails there, naming the key, file and
    tensor."""
    from safetensors.numpy import load_file, save_file

    d = _copy(tiny_peft[0], tmp_path / "adapter")
    tensors = load_file(d / WEIGHTS)
    name = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"
    tensors[name] = tensors[name].copy()
    tensors[name][0, 0] = np.inf
    save_file(tensors, d / WEIGHTS)
    with pytest.raises(PeftFormatError) as e:
        loop.setup(_lora_config(d), str(tmp_path / "run"), mesh=_mesh(), log_fn=lambda m: None)
    assert str(e.value) == f"adapter.init_from: {d / WEIGHTS}: tensor {name} holds non-finite values"


def test_cli_names_the_key_file_and_field_and_records_nothing(tiny_peft, tmp_path):
    wd = tmp_path / "run"
    r = cli("main", "--config=configs/smoke.py:lora", "--config.adapter.rank=8",
            f"--config.adapter.init_from={tiny_peft[0]}", f"--workdir={wd}", timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert stderr_lines(r) == [f"error: invalid config: adapter.init_from: {tiny_peft[0] / CONFIG}: field 'r' is 4, "
                               "the run's adapter.rank is 8"]
    assert not (wd / rundir.CONFIG).exists()
