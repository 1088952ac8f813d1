"""The generate command: end to end on the real SmolLM2 GGUF, and its error path (run in-process)."""

import pytest
from absl import flags

from remix_jax import generate as cli


def _main(capsys, *args):
    if "model" not in flags.FLAGS:
        cli._define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["generate", *args])
    try:
        cli.main(["generate"])
    finally:
        flags.FLAGS.unparse_flags()
    return capsys.readouterr()


def test_generate_cli_real_model_greedy(smollm2_gguf, capsys):
    out = _main(capsys, f"--model={smollm2_gguf}", "--prompt=The capital of France is", "--max_new_tokens=3")
    assert out.out.startswith(" Paris"), out


def test_generate_cli_missing_model_is_one_clear_error(tmp_path, capsys):
    missing = tmp_path / "absent.gguf"
    with pytest.raises(SystemExit) as e:
        _main(capsys, f"--model={missing}", "--prompt=hi")
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == f"error: {missing}: no such file or directory"
