"""The sweep tool end to end with a fake trainer: expansion and names, running, skipping finished runs,
continuing past a failed run, commands mode, aggregation and plots."""

import csv
import json
import math
import os
import pathlib
import textwrap

import pytest

from remix_jax import sweep as sweep_lib
from remix_jax.sweep.__main__ import main as sweep_main

# A stand-in for `python -m remix_jax.main`: parses the same flags, writes the workdir contract
# deterministically from its arguments, and fails for one grid point.
FAKE_TRAINER = textwrap.dedent('''
    import json, os, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    wd = args["workdir"]
    over = {k[len("config."):]: v for k, v in args.items() if k.startswith("config.")}
    variant = args["config"].split(":")[1]
    k, seed = int(over["adapter.top_k"]), int(over["seed"])
    with open(os.environ["FAKE_CALLS"], "a") as f:
        f.write(os.path.basename(wd) + "\\n")
    if os.environ.get("FAKE_EVENTS"):  # parallel mode: record start/end and the device environment
        import time
        with open(os.environ["FAKE_EVENTS"], "a") as f:
            f.write(json.dumps(["start", os.path.basename(wd), os.environ.get("CUDA_VISIBLE_DEVICES"),
                                os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")]) + "\\n")
        time.sleep(0.5)
        with open(os.environ["FAKE_EVENTS"], "a") as f:
            f.write(json.dumps(["end", os.path.basename(wd)]) + "\\n")
    if os.environ.get("FAKE_OOM_DIR"):  # out of device memory when more than FAKE_OOM_FITS (1) run at once
        import time
        fits = int(os.environ.get("FAKE_OOM_FITS", "1"))
        me = os.path.join(os.environ["FAKE_OOM_DIR"], os.path.basename(wd))
        open(me, "w").close()
        # a run given a share of the device waits for the runs started beside it (until more than fit, or
        # FAKE_OOM_WAIT seconds); one with the device to itself (no memory fraction set) looks once
        wait = float(os.environ.get("FAKE_OOM_WAIT", "5"))
        deadline = time.time() + (wait if os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION") else 0.0)
        while True:
            others = len(os.listdir(os.environ["FAKE_OOM_DIR"])) - 1
            if others >= fits or time.time() >= deadline:
                break
            time.sleep(0.05)
        time.sleep(0.3)  # stays visible to the runs beside it
        os.remove(me)
        with open(os.path.join(os.path.dirname(os.environ["FAKE_OOM_DIR"]), "sharing.txt"), "a") as f:
            f.write(f"{os.path.basename(wd)} {os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', '-')} {others}\\n")
        if others >= fits or os.environ.get("FAKE_OOM_ALWAYS"):
            print("jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 14.97GiB")
            sys.exit(1)
    print("training", variant, k, seed)
    if variant == "lora" and k == 2 and seed == 1:
        print("boom", file=sys.stderr)
        sys.exit(3)
    os.makedirs(os.path.join(wd, "eval"), exist_ok=True)
    routed = variant == "remix"
    with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
        for step in range(0, 40, 10):
            row = {"step": step, "loss": 2.0 - 0.01 * step - 0.1 * seed, "lr": 1e-3, "tokens_per_s": 100.0}
            if routed:
                ess = [4.0 - 0.05 * step, 3.0 - 0.05 * step]
                row.update({"routing/ess_softmax": sum(ess) / 2, "routing/ess_softmax_per_block": ess,
                            "routing/ess_applied": float(k), "routing/entropy": 1.0})
            f.write(json.dumps(row) + "\\n")
    acc = 0.1 * k + 0.01 * seed + (0.2 if routed else 0.0)
    with open(os.path.join(wd, "eval", "gsm8k.json"), "w") as f:
        json.dump({"task": "gsm8k", "accuracy": acc, "num_correct": int(1000 * acc), "num_total": 1000,
                   "heldout_loss": 1.5 - 0.1 * k, "config": over, "commit": None}, f)
    with open(os.path.join(wd, "run_complete.json"), "w") as f:
        json.dump({"step": 30, "wall_s": 1.0 + seed}, f)
''')

SWEEP_FILE = textwrap.dedent('''
    import sys
    from remix_jax.sweep import KEYS

    def get_sweep():
        return {
            "config": "configs/fake.py:remix",
            "base_overrides": {KEYS.model_path: "random:tiny", KEYS.num_steps: 30},
            "grid": [
                [{"name": "remix"}, {"name": "lora", "config": ":lora", "labels": {"family": "lora"}}],
                {KEYS.top_k: [1, 2]},
            ],
            "seeds": [0, 1],
            "runner": [sys.executable, RUNNER],
            "report": {
                "plots": [
                    {"kind": "line", "x": KEYS.top_k, "y": "gsm8k/accuracy", "series": "variant",
                     "file": "acc_vs_k.png"},
                    {"kind": "bar", "x": "variant", "y": "gsm8k/accuracy", "file": "bar.png"},
                    {"kind": "ess", "series": "variant", "file": "ess.png"},
                    {"kind": "ess_blocks", "series": "variant", "file": "ess_blocks.png"},
                ],
            },
        }
''')


@pytest.fixture()
def sweep_file(tmp_path, monkeypatch):
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    path = tmp_path / "exp" / "toy.py"
    path.parent.mkdir()
    path.write_text(SWEEP_FILE.replace("RUNNER", repr(str(trainer))))
    monkeypatch.setenv("FAKE_CALLS", str(tmp_path / "calls.txt"))
    return path


def _calls(tmp_path):
    p = tmp_path / "calls.txt"
    return p.read_text().split() if p.exists() else []


EXPECTED_NAMES = [f"{v}__top_k={k}__seed={s}" for v in ("remix", "lora") for k in (1, 2) for s in (0, 1)]


def results_of(sweep_file: pathlib.Path) -> pathlib.Path:
    """Where a sweep's outputs go by default: DIR/NAME.py -> DIR/results/NAME (runs, tables, plots)."""
    return sweep_file.parent / "results" / sweep_file.stem


def test_expansion_names_and_commands(sweep_file):
    sw = sweep_lib.load_sweep(sweep_file)
    assert [r.name for r in sw.runs] == EXPECTED_NAMES
    assert sw.out_dir == str(results_of(sweep_file))
    run = sw.runs[6]  # lora, k=2, seed=0
    assert run.config == "configs/fake.py:lora"
    assert run.workdir == str(results_of(sweep_file) / "runs" / run.name)
    assert run.params == {"variant": "lora", "family": "lora", "adapter.top_k": 2, "seed": 0}
    cmd = run.command(sw.runner)
    assert cmd[2:] == ["--config=configs/fake.py:lora", f"--workdir={run.workdir}",
                       "--config.model.path=random:tiny", "--config.train.num_steps=30",
                       "--config.adapter.top_k=2", "--config.seed=0"]
    selected = sweep_lib.select(sw.runs, r"^lora.*seed=1")
    assert [r.name for r in selected] == [EXPECTED_NAMES[5], EXPECTED_NAMES[7]]


def test_expand_product_of_keys_and_errors():
    grid = [{"adapter.rank": [4, 8], "train.baseline": ["rloo", "none"]}]
    runs = sweep_lib.expand({"config": "c.py", "grid": grid, "seeds": [3]}, "root")
    assert [r.name for r in runs] == ["rank=4__baseline=rloo__seed=3", "rank=4__baseline=none__seed=3",
                                      "rank=8__baseline=rloo__seed=3", "rank=8__baseline=none__seed=3"]
    assert runs[0].overrides == {"adapter.rank": 4, "train.baseline": "rloo", "seed": 3}
    with pytest.raises(sweep_lib.SweepError, match=r"grid\[0\].*non-empty list"):
        sweep_lib.expand({"config": "c.py", "grid": [{"adapter.rank": 4}]}, "root")
    with pytest.raises(sweep_lib.SweepError, match="duplicate variant names"):
        sweep_lib.expand({"config": "c.py", "grid": [[{"name": "a"}, {"name": "a"}]]}, "root")
    with pytest.raises(sweep_lib.SweepError, match="unknown field.*'seed'"):
        sweep_lib.expand({"config": "c.py", "seed": 0}, "root")
    with pytest.raises(sweep_lib.SweepError, match=r"grid\[0\]\[0\].*unknown variant field"):
        sweep_lib.expand({"config": "c.py", "grid": [[{"name": "a", "override": {}}]]}, "root")
    assert sweep_lib.format_value((1, 2)) == "(1, 2)" and sweep_lib.format_value(True) == "True"


def test_bad_sweep_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(sweep_lib.SweepError, match="bad.py: defines no get_sweep"):
        sweep_lib.load_sweep(bad)
    assert sweep_main([f"--sweep={tmp_path / 'missing.py'}"]) == 2


def test_run_skip_fail_and_aggregate(sweep_file, tmp_path, capsys):
    out = results_of(sweep_file)
    assert sweep_main([f"--sweep={sweep_file}", "--dry_run"]) == 0
    assert _calls(tmp_path) == [] and not (out / "runs").exists()

    # first invocation: every run starts; one fails, the others complete; exit status 1
    assert sweep_main([f"--sweep={sweep_file}", "--quiet"]) == 1
    assert _calls(tmp_path) == EXPECTED_NAMES
    failed = "lora__top_k=2__seed=1"
    assert "exit status 3" in capsys.readouterr().err
    assert "boom" in (out / "runs" / failed / "log.txt").read_text()
    assert not (out / "runs" / failed / "run_complete.json").exists()
    assert "training remix 1 0" in (out / "runs" / EXPECTED_NAMES[0] / "log.txt").read_text()

    # second invocation: finished runs are skipped, only the failed one is tried again
    assert sweep_main([f"--sweep={sweep_file}", "--quiet"]) == 1
    assert _calls(tmp_path) == EXPECTED_NAMES + [failed]

    # commands mode: one line per unfinished run, finished ones commented
    assert sweep_main([f"--sweep={sweep_file}", "--mode=commands"]) == 0
    lines = (out / "commands.sh").read_text().splitlines()
    active = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(active) == 1 and f"--workdir={out / 'runs' / failed}" in active[0]
    assert sum(ln.startswith("# finished: ") for ln in lines) == 7

    # aggregation: results.csv rows and the markdown means/stds, computed by hand
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == EXPECTED_NAMES
    by_name = {r["name"]: r for r in rows}
    assert by_name[failed]["status"] == "incomplete" and by_name[failed]["gsm8k/accuracy"] == ""
    assert float(by_name["remix__top_k=2__seed=1"]["gsm8k/accuracy"]) == pytest.approx(0.41)
    assert float(by_name["remix__top_k=1__seed=0"]["train/final_loss"]) == pytest.approx(1.7)
    assert float(by_name["remix__top_k=1__seed=0"]["routing/ess_softmax_final"]) == pytest.approx(2.0)
    assert "--config.seed=1" in by_name[failed]["command"]

    md = (out / "results.md").read_text()
    # remix k=1: accuracies 0.30, 0.31 -> mean 30.50 %, sample std 0.7071 %
    std = math.sqrt(((0.30 - 0.305) ** 2 + (0.31 - 0.305) ** 2) / 1) * 100
    # columns: variant, top_k, family (a label only the lora variant has), seeds, accuracy, heldout loss
    # and the 95% t interval's half-width, t_{0.975, 1} = 12.7062 times std / sqrt(2)
    half = 12.7062 * std / math.sqrt(2)
    assert f"| remix | 1 | - | 2 | 30.50 ± {std:.2f} (±{half:.2f}, n=2) | 1.4 ± 0 (±0, n=2) |" in md
    # lora k=2: only seed 0 complete -> one value, no std
    assert "| lora | 2 | lora | 1 | 20.00 | 1.3 |" in md
    assert "lora__top_k=2__seed=1: incomplete" in md
    for png in ("acc_vs_k.png", "bar.png", "ess.png", "ess_blocks.png"):
        _assert_png(out / png)

    # report_only re-aggregates without running anything
    (out / "results.md").unlink()
    assert sweep_main([f"--sweep={sweep_file}", "--report_only"]) == 0
    assert (out / "results.md").exists() and len(_calls(tmp_path)) == 9


def _assert_png(path: pathlib.Path):
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 100 and im.size[1] > 100


def test_a_finished_run_of_another_config_is_a_conflict(sweep_file, tmp_path, capsys):
    """A folder holding a finished run whose config.json disagrees with the sweep's settings for it (another
    experiment pointed at the same --out_dir) is reported, neither reused nor trained over; one that agrees is
    skipped as finished."""
    out = results_of(sweep_file)
    assert sweep_main([f"--sweep={sweep_file}", "--quiet", "--only=^remix"]) == 0
    calls = _calls(tmp_path)
    runs = out / "runs"
    agree, clash = runs / "remix__top_k=1__seed=0", runs / "remix__top_k=2__seed=0"
    (agree / "config.json").write_text(json.dumps({"seed": 0, "adapter": {"top_k": 1, "rank": 4},
                                                   "model": {"path": "random:tiny"}, "train": {"num_steps": 30}}))
    (clash / "config.json").write_text(json.dumps({"seed": 0, "adapter": {"top_k": 2},
                                                   "model": {"path": "other.gguf"}, "train": {"num_steps": 30}}))
    before = {p: p.read_bytes() for p in clash.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert sweep_main([f"--sweep={sweep_file}", "--quiet", "--only=^remix"]) == 1
    printed = capsys.readouterr()
    assert _calls(tmp_path) == calls  # nothing trained again
    assert "remix__top_k=1__seed=0: finished already, skipped" in printed.out
    assert f"{clash} holds a finished run of another config (model.path: 'other.gguf' -> 'random:tiny')" \
        in printed.out + printed.err
    assert {p: p.read_bytes() for p in clash.rglob("*") if p.is_file()} == before
    assert sweep_main([f"--sweep={sweep_file}", "--mode=commands", "--only=^remix"]) == 0
    lines = (out / "commands.sh").read_text().splitlines()
    assert sum(ln.startswith("# finished under another config (model.path:") for ln in lines) == 1


def test_only_filter_runs_subset(sweep_file, tmp_path):
    assert sweep_main([f"--sweep={sweep_file}", "--quiet", "--only=^remix__top_k=1"]) == 0
    assert _calls(tmp_path) == EXPECTED_NAMES[:2]
    # the definition's folder holds the definition and results/ only: outputs never mix with definitions
    assert sorted(p.name for p in sweep_file.parent.iterdir() if p.name != "__pycache__") == ["results", "toy.py"]
    assert sorted(p.name for p in (sweep_file.parent / "results").iterdir()) == ["toy"]
    wd = results_of(sweep_file) / "runs" / EXPECTED_NAMES[0]
    done = json.loads((wd / "run_complete.json").read_text())
    assert done["step"] == 30


def test_default_runner_and_workdir_root(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("def get_sweep():\n    return {'config': 'configs/x.py', 'workdir_root': 'elsewhere'}\n")
    sw = sweep_lib.load_sweep(path)
    assert sw.runner == ("python", "-m", "remix_jax.main")
    assert [r.name for r in sw.runs] == ["seed=0"] and sw.runs[0].workdir == "elsewhere/seed=0"
    assert sweep_lib.load_sweep(path, workdir_root="w").runs[0].workdir == "w/seed=0"


def test_device_envs():
    envs = sweep_lib.device_envs(8, ["0", "1", "2", "3"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2", "3"] * 2
    assert {e["XLA_PYTHON_CLIENT_MEM_FRACTION"] for e in envs} == {"0.450"}
    envs = sweep_lib.device_envs(3, ["5", "7"])
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["5", "7", "5"]
    assert envs[0]["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.450" and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in envs[1]
    assert sweep_lib.device_envs(2, []) == [{}, {}]
    with pytest.raises(sweep_lib.SweepError, match="parallel"):
        sweep_lib.device_envs(0, ["0"])


def test_parallel_runs_spread_over_devices(sweep_file, tmp_path, monkeypatch):
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv("FAKE_EVENTS", str(events))
    assert sweep_main([f"--sweep={sweep_file}", "--quiet", "--parallel=3", "--devices=0,1"]) == 1  # one fails
    assert sorted(_calls(tmp_path)) == sorted(EXPECTED_NAMES)
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    starts = [r for r in rows if r[0] == "start"]
    assert {r[2] for r in starts} <= {"0", "1"} and len(starts) == 8
    assert all((r[3] == "0.450") == (r[2] == "0") for r in starts)  # two slots share GPU 0, one has GPU 1
    live = peak = 0
    for r in rows:
        live += 1 if r[0] == "start" else -1
        peak = max(peak, live)
    assert 2 <= peak <= 3
    # every finished run is complete and aggregated as in the sequential mode
    with open(results_of(sweep_file) / "results.csv") as f:
        done = [r for r in csv.DictReader(f) if r["status"] == "complete"]
    assert len(done) == 7


def test_out_of_memory_when_sharing_runs_again_alone(sweep_file, tmp_path, monkeypatch, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.setenv("FAKE_OOM_DIR", str(busy))
    assert sweep_main([f"--sweep={sweep_file}", "--quiet", "--parallel=2", "--devices=0", "--only=^remix"]) == 0
    out = capsys.readouterr().out
    calls = _calls(tmp_path)
    remix = [n for n in EXPECTED_NAMES if n.startswith("remix")]
    assert sorted(set(calls)) == remix
    assert sorted(calls) == sorted(remix * 2)  # two at a time, both out of memory; then each alone
    for name in remix:
        assert f"{name}: ran out of device memory: exit status 1" in out
        assert f"{name}: running again, alone" in out
        log = (results_of(sweep_file) / "runs" / name / "log.txt").read_text()
        assert "RESOURCE_EXHAUSTED" in log and log.count("$ ") == 2  # both attempts in the run's log
    with open(results_of(sweep_file) / "results.csv") as f:
        assert [r["status"] for r in csv.DictReader(f) if r["name"].startswith("remix")] == ["complete"] * 4


def test_out_of_memory_when_sharing_runs_again_with_half_as_many_beside_it(sweep_file, tmp_path, monkeypatch,
                                                                            capsys):
    """Four runs on one GPU where two fit: all four run out of memory; the next round runs them two at a time, each
    with half the device's memory, and they finish there without waiting to run alone."""
    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.setenv("FAKE_OOM_DIR", str(busy))
    monkeypatch.setenv("FAKE_OOM_FITS", "2")
    monkeypatch.setenv("FAKE_OOM_WAIT", "3")
    assert sweep_main([f"--sweep={sweep_file}", "--quiet", "--parallel=4", "--devices=0", "--only=^remix"]) == 0
    out = capsys.readouterr().out
    remix = [n for n in EXPECTED_NAMES if n.startswith("remix")]
    assert sorted(_calls(tmp_path)) == sorted(remix * 2)
    for name in remix:
        assert f"{name}: ran out of device memory: exit status 1 (see" in out
        assert "it runs again with fewer runs beside it when the queue is done" in out
        assert f"{name}: running again, 2 at a time on each device" in out
        assert f"{name}: running again, alone" not in out
    tries = [line.split() for line in (tmp_path / "sharing.txt").read_text().splitlines()]
    assert sorted((name, frac) for name, frac, _ in tries) == sorted(
        [(n, "0.225") for n in remix] + [(n, "0.450") for n in remix])
    assert all(int(others) >= 2 for _, frac, others in tries if frac == "0.225")
    assert all(int(others) == 1 for _, frac, others in tries if frac == "0.450")


def test_out_of_memory_alone_is_a_failure(sweep_file, tmp_path, monkeypatch, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    monkeypatch.setenv("FAKE_OOM_DIR", str(busy))
    monkeypatch.setenv("FAKE_OOM_ALWAYS", "1")
    # one at a time: nothing to wait for, so an out-of-memory failure is final
    assert sweep_main([f"--sweep={sweep_file}", "--quiet", "--only=^remix__top_k=1"]) == 1
    assert sorted(_calls(tmp_path)) == ["remix__top_k=1__seed=0", "remix__top_k=1__seed=1"]
    assert "running again" not in capsys.readouterr().out
    # shared: run again alone once, then reported as failed (not retried without end)
    assert sweep_main([f"--sweep={sweep_file}", "--quiet", "--parallel=2", "--only=^remix__top_k=2"]) == 1
    out = capsys.readouterr().out
    assert sorted(_calls(tmp_path)[2:]) == sorted(["remix__top_k=2__seed=0", "remix__top_k=2__seed=1"] * 2)
    assert out.count("FAILED: ran out of device memory: exit status 1") == 2


def test_identical_runs_of_two_sweeps_train_once(sweep_file, tmp_path):
    other = sweep_file.parent / "other.py"
    text = sweep_file.read_text()
    grid_start = text.index('"grid"')
    grid_end = text.index('"seeds"')
    other.write_text(text[:grid_start] + '"grid": [{KEYS.top_k: [2, 3]}],\n            ' + text[grid_end:]
                     .replace('"seeds": [0, 1]', '"seeds": [0]'))
    assert sweep_main([f"--sweep={sweep_file},{other}", "--quiet", "--only=^remix|^top_k"]) == 0
    calls = _calls(tmp_path)
    # other.py's top_k=2 seed 0 is toy.py's remix top_k=2 seed 0 (same config spec and overrides): trained once
    assert sorted(calls) == sorted([n for n in EXPECTED_NAMES if n.startswith("remix")] + ["top_k=3__seed=0"])
    link = results_of(other) / "runs" / "top_k=2__seed=0"
    assert link.is_symlink()
    assert link.resolve() == (results_of(sweep_file) / "runs" / "remix__top_k=2__seed=2").parent.resolve() / \
        "remix__top_k=2__seed=0"
    with open(results_of(other) / "results.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["top_k=2__seed=0"]["status"] == "complete"
    assert float(rows["top_k=2__seed=0"]["gsm8k/accuracy"]) == pytest.approx(0.4)
    # a second invocation finds everything finished; --no_dedup would train the duplicate itself
    assert sweep_main([f"--sweep={sweep_file},{other}", "--quiet", "--only=^remix|^top_k"]) == 0
    assert len(_calls(tmp_path)) == len(calls)


def test_fingerprint_resolves_the_config(tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(textwrap.dedent('''
        import ml_collections
        def get_config(arg="a"):
            return ml_collections.ConfigDict({"seed": 0, "variant": arg,
                                              "adapter": {"top_k": 2, "rank": 8}, "train": {"lr": 1e-3}})
    '''))

    def run(config, **over):
        return sweep_lib.Run(name="x", workdir="w", config=f"{cfg}:{config}", overrides=over, params={})

    fp = sweep_lib.fingerprint
    assert fp(run("a")) == fp(run("a", **{"adapter.top_k": 2})) == fp(run("a", **{"train.lr": 0.001}))
    assert fp(run("a")) != fp(run("a", **{"adapter.top_k": 3}))
    assert fp(run("a")) != fp(run("b"))
    assert fp(run("a", seed=1)) != fp(run("a", seed=2))


def test_results_root_moves_every_sweep_and_keeps_sharing(sweep_file, tmp_path, capsys):
    other = sweep_file.parent / "other.py"
    text = sweep_file.read_text()
    grid_start, grid_end = text.index('"grid"'), text.index('"seeds"')
    other.write_text(text[:grid_start] + '"grid": [{KEYS.top_k: [2]}],\n            ' + text[grid_end:]
                     .replace('"seeds": [0, 1]', '"seeds": [0]'))
    root = tmp_path / "study"
    assert sweep_main([f"--sweep={sweep_file},{other}", f"--results_root={root}", "--quiet",
                       "--only=^remix__top_k=2__seed=0|^top_k"]) == 0
    assert _calls(tmp_path) == ["remix__top_k=2__seed=0"]  # the shared run trained once
    link = root / "other" / "runs" / "top_k=2__seed=0"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert link.resolve() == (root / sweep_file.stem / "runs" / "remix__top_k=2__seed=0").resolve()
    for name in (sweep_file.stem, "other"):
        assert (root / name / "results.csv").exists() and not (sweep_file.parent / "results" / name).exists()
    capsys.readouterr()
    assert sweep_main([f"--sweep={other}", f"--results_root={root}", f"--out_dir={tmp_path / 'x'}"]) != 0
    assert "not both" in capsys.readouterr().err
