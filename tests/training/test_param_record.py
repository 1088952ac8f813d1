"""training.param_record: WORKDIR/params.json back-filled from a run's config.json (no training, no weights), the
counts against a hand count, the model override, the check against the run's exported adapters, and the sweep's
--params_only command line."""

import json
import textwrap

import numpy as np
import pytest

from remix_jax import rundir
from remix_jax.adapters.param_count import leaf_shapes, param_counts
from remix_jax.cli import UserError
from remix_jax.sweep.__main__ import main as sweep_main
from remix_jax.training import param_record

# configs/smoke.py's ReMix on random:tiny (hidden 64, FFN 128, 2 layers): n=4, k=2, r=4 on gate/up/down.
# Experts: 2 layers x 4 x 4 x ((64+128) + (64+128) + (128+64)) = 18432; block router 2 x 64 x 4 = 512.
REMIX_TINY = {"trainable": 18432 + 512, "active": 512 + 18432 * 2 // 4}
# LoRA rank 4 on the same projections: 2 x 4 x 576.
LORA_TINY = {"trainable": 4608, "active": 4608}


def _run_dir(path, config):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(rundir.config_dict(config), indent=2))
    return path


def test_backfill_writes_once_from_config_json(tmp_path, make_config):
    wd = _run_dir(tmp_path / "run", make_config("remix"))
    assert param_record.backfill(str(wd)) == ("written", REMIX_TINY)
    assert json.loads((wd / "params.json").read_text()) == REMIX_TINY
    # a second back-fill keeps the file; a folder without config.json is left alone
    (wd / "params.json").write_text(json.dumps({"trainable": 1, "active": 1}))
    assert param_record.backfill(str(wd)) == ("present", None)
    assert json.loads((wd / "params.json").read_text()) == {"trainable": 1, "active": 1}
    (tmp_path / "empty").mkdir()
    assert param_record.backfill(str(tmp_path / "empty")) == ("no config.json", None)
    assert not (tmp_path / "empty" / "params.json").exists()


def test_write_counts_replaces_only_what_differs(tmp_path):
    assert param_record.write_counts(str(tmp_path), LORA_TINY)
    assert not param_record.write_counts(str(tmp_path), dict(LORA_TINY))
    (tmp_path / "params.json").write_text('{"trainable": ')  # damaged: the owning run rewrites it
    assert param_record.write_counts(str(tmp_path), LORA_TINY)
    assert json.loads((tmp_path / "params.json").read_text()) == LORA_TINY
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.json"]


def test_a_model_path_not_here_needs_the_override(tmp_path, make_config):
    config = make_config("lora", num_samples=1)
    config.model.path = "MODEL/elsewhere.gguf"
    wd = _run_dir(tmp_path / "run", config)
    with pytest.raises(UserError, match=r"run/config.json: model.path 'MODEL/elsewhere.gguf' does not exist here") as e:
        param_record.backfill(str(wd))
    assert "--model_path" in e.value.hint and "smollm2-135m" in e.value.hint
    assert not (wd / "params.json").exists()
    assert param_record.backfill(str(wd), model_path="random:tiny") == ("written", LORA_TINY)


def test_gguf_header_and_named_shape_give_the_same_counts(smollm2_gguf):
    """SmolLM2-135M (hidden 576, FFN 1536, 30 layers), LoRA r=16 on gate/up/down: 30 x 16 x 3 x (576 + 1536)."""
    config = {"adapter": {"method": "lora", "rank": 16, "targets": ["gate_proj", "up_proj", "down_proj"]},
              "model": {"path": str(smollm2_gguf)}}
    shapes, cfg = param_record.abstract_trainable(config)
    counts = param_counts(shapes, cfg)
    assert counts == {"trainable": 3_041_280, "active": 3_041_280}
    shapes, cfg = param_record.abstract_trainable(config, model_path="random:smollm2-135m")
    assert param_counts(shapes, cfg) == counts


def test_the_exported_adapters_must_match(tmp_path, make_config):
    from safetensors.numpy import save_file

    wd = _run_dir(tmp_path / "run", make_config("remix"))
    shapes, _ = param_record.abstract_trainable(json.loads((wd / "config.json").read_text()))
    flat = {**leaf_shapes(shapes["adapter"], "adapter/"),
            **leaf_shapes(shapes["router"], "router/")}
    (wd / "export").mkdir()
    wrong = {k: np.zeros(s[:-1] + (s[-1] + 1,) if k.endswith("mlp/weight") else s, np.float32) for k, s in flat.items()}
    save_file(wrong, str(wd / "export" / "adapters.safetensors"))
    with pytest.raises(UserError, match=r"adapters.safetensors: the run's adapters differ .*router/layers/mlp/weight: "
                                         r"exported \(2, 64, 5\), computed \(2, 64, 4\)"):
        param_record.backfill(str(wd))
    assert not (wd / "params.json").exists()
    save_file({k: np.zeros(s, np.float32) for k, s in flat.items()}, str(wd / "export" / "adapters.safetensors"))
    assert param_record.backfill(str(wd)) == ("written", REMIX_TINY)


SWEEP = textwrap.dedent('''
    def get_sweep():
        return {"config": "configs/smoke.py:remix",
                "grid": [[{"name": "remix"}, {"name": "lora", "config": ":lora"}, {"name": "dora", "config": ":dora"}]],
                "seeds": [0]}
''')


def test_sweep_params_only(tmp_path, make_config, capsys):
    sweep = tmp_path / "toy.py"
    sweep.write_text(SWEEP)
    runs = tmp_path / "results" / "toy" / "runs"
    _run_dir(runs / "remix__seed=0", make_config("remix"))
    _run_dir(runs / "lora__seed=0", make_config("lora", num_samples=1))  # dora__seed=0: not started
    assert sweep_main([f"--sweep={sweep}", "--params_only"]) == 0
    out = capsys.readouterr().out
    assert f"{runs / 'remix__seed=0'}: wrote params.json (18944 trainable, 9728 active)" in out
    assert f"{runs / 'dora__seed=0'}: no config.json (not started), skipped" in out
    assert json.loads((runs / "lora__seed=0" / "params.json").read_text()) == LORA_TINY
    assert not (runs / "dora__seed=0").exists()
    assert sweep_main([f"--sweep={sweep}", "--params_only", "--only=lora"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"{runs / 'lora__seed=0'}: params.json present, kept"
    assert sweep_main([f"--sweep={sweep}", "--model_path=random:tiny"]) == 2
    assert "--model_path applies to --params_only" in capsys.readouterr().err
