"""The inspection command: formatted prompts with the masked part marked, and length statistics."""

import subprocess
import sys

import numpy as np

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
