"""Progress bars of model loading, evaluation and generation: what they count (tensors, questions, prompts), and
that they are drawn only on a terminal, when asked for and not switched off by REMIX_PROGRESS=0."""

import io

import jax
import pytest
from tiny_run import make_tiny_hf

from remix_jax import progress as progress_lib


class _Recorder:
    """Stands in for a tqdm bar: records its total and every update."""

    bars: list = []

    def __init__(self, total, desc, unit, requested=True):
        self.total, self.desc, self.unit, self.requested, self.updates = total, desc, unit, requested, []
        _Recorder.bars.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def reset(self, total=None):
        self.total, self.updates = total, []

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


@pytest.fixture
def recorded(monkeypatch):
    _Recorder.bars = []
    monkeypatch.setattr(progress_lib, "bar", _Recorder)
    return _Recorder.bars


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_hf(tmp_path_factory.mktemp("tiny") / "model")


def test_enabled_only_on_a_terminal(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("REMIX_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert not progress_lib.enabled(True)  # not a terminal: log files stay clean
    monkeypatch.setattr("sys.stderr", Tty())
    assert progress_lib.enabled(True) and not progress_lib.enabled(False)
    monkeypatch.setenv("REMIX_PROGRESS", "0")
    assert not progress_lib.enabled(True)
    assert isinstance(progress_lib.bar(10, "x", "it"), progress_lib._NoBar)
    monkeypatch.setenv("REMIX_PROGRESS", "1")
    tty = Tty()
    monkeypatch.setattr("sys.stderr", tty)
    bar = progress_lib.bar(4, "arc_e: scoring", "question")
    bar.update(1.5)
    bar.update(2.5)
    bar.refresh()  # drawn at most every 0.1 s otherwise
    bar.close()
    assert "arc_e: scoring: 100%" in tty.getvalue() and "4/4 question" in tty.getvalue()


def test_model_loading_counts_tensors(model_dir, recorded):
    from remix_jax.models.hf_io import expected_shapes
    from remix_jax.models.loading import load_model

    cfg, _ = load_model(model_dir)
    (bar,) = recorded
    assert bar.unit == "tensor" and bar.desc == "loading model"
    assert sum(bar.updates) == len(expected_shapes(cfg)) == bar.total  # every tensor once


def test_evaluation_counts_questions_and_prompts(model_dir, recorded):
    from remix_jax.evaluation import evaluator
    from remix_jax.inference.generation import GenerationConfig
    from remix_jax.models.llama import Decoder
    from remix_jax.models.loading import load_model, load_tokenizer

    cfg, params = load_model(model_dir, progress=False)
    runner = evaluator.ModelRunner(Decoder(cfg), {"params": params}, load_tokenizer(model_dir), batch_size=4,
                                   progress=True)
    runner.task = "arc_e"
    recorded.clear()
    # 3 questions with 3 options each: 9 rows; packed, the three questions fit one row of 256 tokens (one batch);
    # in the cache form, batches of at most 4 rows of whole questions (3 batches of 3 rows); as whole sequences, 3
    # batches of 4, 4, 1 rows
    for share, pack_len, updates in ((True, 256, [3]), (True, 0, [1, 1, 1]), (False, 256, [4 / 3, 4 / 3, 1 / 3])):
        runner.share_context, runner.pack_len = share, pack_len
        recorded.clear()
        runner.loglik(["Q1?"] * 3 + ["Question 2?"] * 3 + ["Q3 is longer?"] * 3, ["a", "bb", "c"] * 3)
        (bar,) = recorded
        assert (bar.desc, bar.unit, bar.total) == ("arc_e: scoring", "question", 3)  # options share their question's
        assert bar.updates == pytest.approx(updates) and sum(bar.updates) == pytest.approx(3)
    recorded.clear()
    runner.loglik(["Q1?"] * 4, ["a", "b", "c", "d"], questions=2)
    assert (recorded[0].total, sum(recorded[0].updates)) == (2, pytest.approx(2))
    recorded.clear()
    texts = runner.generate(["a", "bc", "def", "g", "hi"], GenerationConfig(max_new_tokens=2), [], jax.random.key(0))
    (bar,) = recorded
    assert len(texts) == 5 and (bar.desc, bar.unit, bar.total) == ("arc_e: generating", "prompt", 5)
    assert bar.updates == [4, 1]  # one update per generated chunk of max_batch = 4 prompts
