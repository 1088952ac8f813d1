"""The generate command: end to end on the real SmolLM2 GGUF, and its error path (run in-process)."""

from absl import flags

from remix_jax import cli as cli_lib
from remix_jax import generate as cli


def _main(capsys, *args):
    """(exit status as remix_jax.cli reports it, captured output)."""
    if "model" not in flags.FLAGS:
        cli._define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["generate", *args])
    try:
        code = cli_lib.guard(lambda: cli.main(["generate"]), ["generate", *args])
    finally:
        flags.FLAGS.unparse_flags()
    return code, capsys.readouterr()


def test_generate_cli_real_model_greedy(smollm2_gguf, capsys):
    code, out = _main(capsys, f"--model={smollm2_gguf}", "--prompt=The capital of France is", "--max_new_tokens=3")
    assert code == 0 and out.out.startswith(" Paris"), out


def test_generate_cli_missing_model_is_one_clear_error(tmp_path, capsys):
    missing = tmp_path / "absent.gguf"
    code, out = _main(capsys, f"--model={missing}", "--prompt=hi")
    assert code == 2
    assert out.err.strip() == f"error: {missing}: no such file or directory"
