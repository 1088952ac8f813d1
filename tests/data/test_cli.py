"""The inspection command: formatted prompts with the masked part marked, and length statistics."""

import subprocess
import sys

import numpy as np
import pytest

import remix_jax.data as data
from remix_jax.data.__main__ import inspect, marked
from tests.conftest import REPO
from tests.data.conftest import gsm8k_config


def test_marked_shows_prompt_in_brackets(tokenizer):
    ids, mask = data.tokenize_example(tokenizer, "2+2?", "4", plain_format="Q: {prompt}\nA: ")
    assert marked(tokenizer, ids, mask) == "[[Q: 2+2?\nA: ]]4<|im_end|>"


def test_inspect_report(data_dir, tfds_dir, built, tokenizer):
    cfg = gsm8k_config(data_dir, tfds_dir, max_length=256)
    report = inspect(cfg, tokenizer, show=2, split="test")
    assert report.count("-- example") == 2 and "== source gsm8k: 250 examples" in report
    src = data.open_sources(cfg, split="test")[0]
    lengths = np.array(
        [
            len(data.tokenize_example(tokenizer, src.get(i).prompt, src.get(i).response)[0])
            for i in range(src.size)
        ]
    )
    assert f"max={lengths.max()} over max_length=256: {(lengths > 256).sum()} " in report
    first = src.get(0)
    assert f"[[### Instruction:\n{first.prompt}\n\n### Response:\n]]{first.response}<|im_end|>" in report


def test_command_line(data_dir, tfds_dir, built, smollm2_gguf, tmp_path):
    conf = tmp_path / "cfg.py"
    conf.write_text(
        "import ml_collections\nfrom remix_jax.data import default_data_config, source_config\n"
        "def get_config():\n    c = ml_collections.ConfigDict()\n    c.data = default_data_config()\n"
        f"    c.data.sources.arc = source_config('llm_adapters/arc_challenge',\n"
        f"        manual_dir={str(data_dir / 'llm_adapters')!r})\n    return c\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "remix_jax.data",
            f"--config={conf}",
            "--show=1",
            f"--tokenizer={smollm2_gguf}",
            f"--config.data.tfds_data_dir={tfds_dir}",
            "--config.data.template=chat",
            "--config.data.max_length=64",
            "--split=test",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "== source arc: 206 examples" in out.stdout
    assert "<|im_start|>assistant\n]]the correct answer is answer" in out.stdout
    assert "over max_length=64:" in out.stdout


def _cfg(**model):
    import ml_collections

    from remix_jax.data import default_data_config

    c = ml_collections.ConfigDict({"data": default_data_config()})
    if model:
        c.model = ml_collections.ConfigDict(model)
    return c


def _tokenizerless_gguf(path):
    """A GGUF file with model metadata and no tokenizer.ggml.* keys."""
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_tokenizer_from_the_model_unless_set(smollm2_gguf, tokenizer, tmp_path):
    """--tokenizer, else data.tokenizer, else model.path's own (GGUF file or folder); asks only when none."""
    from absl import app

    from remix_jax.data.__main__ import config_tokenizer
    from remix_jax.models.tokenizer import load_tokenizer

    text = "<|im_start|>user\nThe capital of France is 12 km away.<|im_end|>"
    want = load_tokenizer(smollm2_gguf).encode(text)
    assert len(want) > 10 and config_tokenizer(_cfg(path=str(smollm2_gguf))).encode(text) == want
    folder = tmp_path / "tok"
    tokenizer.save_pretrained(folder)  # the small test tokenizer, a different vocabulary
    small = tokenizer.encode(text)
    assert small != want
    assert config_tokenizer(_cfg(path=str(folder))).encode(text) == small  # a model folder's tokenizer.json
    assert config_tokenizer(_cfg(path=str(smollm2_gguf)), str(folder)).encode(text) == small  # flag wins
    set_in_data = _cfg(path=str(smollm2_gguf))
    set_in_data.data.tokenizer = str(folder)
    assert config_tokenizer(set_in_data).encode(text) == small
    assert config_tokenizer(set_in_data, str(smollm2_gguf)).encode(text) == want
    empty = tmp_path / "no_tokenizer_model"
    empty.mkdir()
    bare = _tokenizerless_gguf(tmp_path / "bare.gguf")
    for cfg, msg in [
        (_cfg(path="random:tiny"), "no tokenizer: model.path='random:tiny' holds no tokenizer; pass --tokenizer"),
        (_cfg(), "no tokenizer: the config names no model; pass --tokenizer"),
        (_cfg(path=""), "no tokenizer: the config names no model; pass --tokenizer"),
        (_cfg(path=str(empty)), f"no tokenizer in model.path: {empty}: model directory has no tokenizer.json; "
                                "pass --tokenizer or set config.data.tokenizer"),
        (_cfg(path=str(bare)), f"no tokenizer in model.path: {bare}: GGUF file has no tokenizer"),
    ]:
        with pytest.raises(app.UsageError) as e:
            config_tokenizer(cfg)
        assert str(e.value).startswith(msg), str(e.value)


def test_command_line_uses_the_models_tokenizer(data_dir, tfds_dir, built, smollm2_gguf, tmp_path):
    """No --tokenizer: a config whose model is a GGUF file is shown with that file's tokenizer."""
    import importlib.util

    from remix_jax.models.tokenizer import load_tokenizer

    conf = tmp_path / "cfg.py"
    conf.write_text(
        "import ml_collections\nfrom remix_jax.data import default_data_config, source_config\n"
        "def get_config():\n    c = ml_collections.ConfigDict()\n"
        f"    c.model = ml_collections.ConfigDict(dict(path={str(smollm2_gguf)!r}))\n"
        "    c.data = default_data_config()\n"
        f"    c.data.sources.arc = source_config('llm_adapters/arc_challenge',\n"
        f"        manual_dir={str(data_dir / 'llm_adapters')!r})\n"
        f"    c.data.tfds_data_dir = {str(tfds_dir)!r}\n"
        "    c.data.template, c.data.max_length = 'chat', 64\n    return c\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "remix_jax.data", f"--config={conf}", "--show=2", "--split=test",
         "--stats_limit=20"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    spec = importlib.util.spec_from_file_location("cfg", conf)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    want = inspect(module.get_config().data, load_tokenizer(smollm2_gguf), show=2, split="test", stats_limit=20)
    assert out.stdout == want + "\n"
    assert "<|im_start|>assistant\n]]the correct answer is answer" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "remix_jax.data", f"--config={conf}", "--config.model.path=random:tiny"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert bad.returncode == 1 and "no tokenizer: model.path='random:tiny' holds no tokenizer" in bad.stderr
