"""``python -m remix_jax.generate --run=WORKDIR``: the run's base model with its trained adapters, routed as in
evaluation, gives exactly the evaluator's greedy generation for the same prompt; from the export or, without
one, from the newest checkpoint."""

import shutil

import jax
import pytest
from tiny_run import cli, copy_run, stderr_lines

PROMPT = "What is 3 plus 4?"
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def trained_run(tiny_gsm8k_run, tmp_path_factory):
    """A finished 4-step run with its export and its step-4 checkpoint (this module's copy of the tiny_gsm8k_run
    fixture's run, tests/conftest.py)."""
    return copy_run(tiny_gsm8k_run, tmp_path_factory.mktemp("gen") / "run")


def _evaluator_greedy(workdir, prompt):
    """The evaluator's generation (ModelRunner.generate with the task runners' decoding settings)."""
    from remix_jax.evaluation import evaluator
    from remix_jax.evaluation.gen_runner import gen_config
    from remix_jax.training import completion
    from remix_jax.training.trained_model import load_trained_model

    loaded = load_trained_model(completion.run_config(str(workdir)), str(workdir), log=lambda _: None)
    runner = evaluator.ModelRunner(loaded.model, loaded.variables, loaded.tokenizer, batch_size=4)
    gen = gen_config(NEW_TOKENS, loaded.tokenizer)
    (text,) = runner.generate([prompt], gen, [], jax.random.key(0))
    return text, loaded.source


def _generate(*args):
    r = cli("generate", f"--prompt={PROMPT}", f"--max_new_tokens={NEW_TOKENS}", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.endswith("\n")
    return r.stdout[:-1], r.stderr


@pytest.fixture(scope="module")
def from_export(trained_run):
    """(stdout, stderr) of ``generate --run=RUN`` on the trained run (with its export): both tests below compare with
    it, and the command is deterministic (greedy), so it runs once."""
    return _generate(f"--run={trained_run['run']}")


def test_generate_from_a_run_equals_the_evaluator(trained_run, from_export):
    run = trained_run["run"]
    text, err = from_export
    expected, source = _evaluator_greedy(run, PROMPT)
    assert source == f"export {run / 'export'}"
    assert text == expected and len(text) > 0
    assert f"with adapters from export {run / 'export'} (method remix)" in err
    base, _ = _generate(f"--model={trained_run['model']}")
    assert base != text  # the adapters change what the model writes


def test_generate_from_the_newest_checkpoint(trained_run, from_export, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run["run"], run)
    shutil.rmtree(run / "export")  # as in an unfinished run
    text, err = _generate(f"--run={run}")
    expected, source = _evaluator_greedy(run, PROMPT)
    steps = trained_run["steps"]
    assert source == f"checkpoint step {steps}" and f"with adapters from checkpoint step {steps}" in err
    assert text == expected
    # the export holds the same final adapters as the newest (final) checkpoint
    assert text == from_export[0]


def test_a_run_without_adapters_is_an_error(trained_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run["run"] / "config.json", run / "config.json")
    r = cli("generate", "--prompt=hi", f"--run={run}")
    assert (r.returncode, stderr_lines(r)) == (2, [
        f"error: {run}: no adapters (no export/ and no checkpoint in checkpoints/)",
        "hint: train the run first, or check the folder"])
