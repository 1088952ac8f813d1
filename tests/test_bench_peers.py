"""scripts/bench_peers.py and bench_train.py's peer launcher: the parts that run without a GPU."""

import importlib.util
import json
import pathlib
import subprocess
import sys
import types

import pytest

_SCRIPTS = pathlib.Path(__file__).resolve().parents[1] / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_word_tokenizer_has_the_models_vocabulary():
    tok = _load("bench_peers")._word_tokenizer(300)
    assert len(tok) == 300 and tok.eos_token_id == tok.pad_token_id == 299
    assert tok("t5 t299 t7")["input_ids"] == [5, 299, 7]
    assert tok.decode([1, 2]) == "t1 t2"


def test_peer_commands(monkeypatch):
    bench = _load("bench_train")
    seen = []

    def fake_run(cmd, capture_output, text):
        seen.append(cmd[2:])
        return types.SimpleNamespace(stdout=json.dumps({"impl": "x"}) + "\n", stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    a = types.SimpleNamespace(shape="llama3.2-1b", batch=8, seq=1024)
    for peer in ("peft", "unsloth", "unsloth_offload", "mixlora"):
        assert bench.run_peer(a, peer) == {"impl": "x"}
    common = ["--shape=llama3.2-1b", "--batch=8", "--seq=1024"]
    assert seen == [["--peer=peft", *common, "--rank=16"],
                    ["--peer=unsloth", *common, "--rank=16"],
                    ["--peer=unsloth", *common, "--unsloth_gc=unsloth", "--rank=16"],
                    ["--peer=mixlora", *common, "--rank=8", "--num_experts=8", "--top_k=2"]]


@pytest.mark.skipif(importlib.util.find_spec("unsloth") is not None, reason="unsloth is installed here")
def test_a_missing_peer_package_is_one_json_error_line():
    p = subprocess.run([sys.executable, str(_SCRIPTS / "bench_peers.py"), "--peer=unsloth", "--shape=tiny"],
                       capture_output=True, text=True)
    assert p.returncode == 1
    line = json.loads(p.stdout.strip().splitlines()[-1])
    assert line["impl"] == "unsloth" and "unsloth" in line["error"]


def test_step_memory_counts_donated_buffers_once():
    """The step's memory (bench_train's step_gib, the TPU compile report's total): arguments + outputs - aliased (a
    donated state is both argument and output) + temporaries."""
    from remix_jax.training.train_step import compiled_memory

    ma = types.SimpleNamespace(argument_size_in_bytes=10, output_size_in_bytes=8, alias_size_in_bytes=7,
                               temp_size_in_bytes=5)
    assert compiled_memory(types.SimpleNamespace(memory_analysis=lambda: ma))["total"] == 16
    assert compiled_memory(types.SimpleNamespace(memory_analysis=lambda: None)) is None
