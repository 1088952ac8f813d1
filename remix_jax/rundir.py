"""A training run's folder (WORKDIR): the config it records, what a rerun may change, its evaluations, its summary.

WORKDIR/config.json is the config the run trains under (model dtypes resolved). Rerunning
``python -m remix_jax.main`` on WORKDIR compares the new config with it:

- the same config: a finished run prints its summary (no model is loaded), an unfinished one resumes;
- a different config is refused, listing every differing key (old -> new), unless ``--continue_with_changes``
  is given. Then the run continues under the new config if every change keeps its checkpoint meaningful:
  ``train.num_steps`` may grow (a finished run trains the extra steps; the learning-rate schedule, a function
  of ``train.num_steps``, then spans the new total), and settings that change neither what was trained nor
  the data stream may change (optimizer, logging, checkpointing, evaluation, mesh, dtypes, memory knobs).
  Changes of the base model, the adapters, the method (``train.num_samples`` / ``baseline`` / ``credit``), the
  seed or the data are refused even then, with the reason (``UNSAFE``): start a new WORKDIR for those. Before the first
  checkpoint nothing has been trained, and any change is accepted with the flag.

Accepted changes are recorded: the replaced config is kept as WORKDIR/config.<N>.json (N = 1, 2, ... in
order) and WORKDIR/config_changes.jsonl gets one line {"time", "step", "previous", "changes": {key: [old,
new]}}. A finished run that is extended keeps its earlier final results: WORKDIR/eval/ and run_complete.json
move to WORKDIR/eval_history/step_<N>/ (N = its last step) before training resumes.

One module, a little over 400 lines, on purpose: the folder's whole contract (what is recorded, what a rerun may
change, which evaluations and summary are read back) in one place, each section depending on the ones above it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from typing import Any

RUN_COMPLETE = "run_complete.json"
CONFIG = "config.json"
CONFIG_CHANGES = "config_changes.jsonl"
FLAG = "--continue_with_changes"
_ABSENT = "<absent>"

# Keys (or key prefixes ending in ".") a continued run may not change, with the reason; the first match wins,
# and CONTINUABLE lists exceptions to the prefixes.
UNSAFE = (
    ("seed", "the adapters' initialisation and the routing samples follow it"),
    ("model.path", "the adapters were trained on this base model"),
    ("model.init_seed", "the adapters were trained on this base model"),
    ("adapter.", "the checkpoint holds adapters of the old adapter configuration"),
    ("train.num_samples", "it is part of the method's training objective (M routing samples)"),
    ("train.baseline", "it is part of the method's training objective (the RLOO baseline)"),
    ("train.credit", "it is part of the method's training objective (the router's credit assignment)"),
    ("data.", "the checkpoint's data position refers to the old data stream"),
)
CONTINUABLE = ("adapter.expert_compute", "data.tfds_data_dir")


class RunConfigError(ValueError):
    """A rerun whose config differs from the one WORKDIR records (see the module docstring)."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


# ------------------------------------------------------------------------------------------ config records


def config_dict(config) -> dict:
    """A ConfigDict as the plain JSON data config.json holds."""
    return json.loads(config.to_json_best_effort())


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b.c": leaf} of nested dicts; an empty dict is a leaf."""
    if not isinstance(tree, dict) or (not tree and prefix):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) of every dotted key that differs; a missing key shows as "<absent>"."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def schema_defaults() -> dict[str, Any]:
    """{"dotted.key": default} of the run config schema (run_config.default_config with its eval section)."""
    from remix_jax import run_config

    c = run_config.default_config()
    out = flatten(config_dict(c))
    out.update(flatten(config_dict(run_config.eval_config()), "eval."))
    return out


def added_with_default(old: dict, changes, defaults: dict | None = None) -> list[tuple[str, Any, Any]]:
    """The changes that remain once keys the record lacks and the new config sets to the schema's default are
    dropped: such a key was added to the schema after the run started, and its default is the behaviour the
    run had (a key that differs from its default is still a change)."""
    defaults = schema_defaults() if defaults is None else defaults
    return [(k, a, b) for k, a, b in changes
            if not (a == _ABSENT and k in defaults and b == defaults[k])]


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise RunConfigError(f"{path}:{e.lineno}: not valid JSON ({e.msg})",
                             "the file is damaged: restore it, or start a new --workdir") from None


def recorded_config(workdir: str) -> dict | None:
    path = os.path.join(workdir, CONFIG)
    return read_json(path) if os.path.exists(path) else None


def checkpoint_steps(workdir: str) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def finished_step(workdir: str) -> int | None:
    path = os.path.join(workdir, RUN_COMPLETE)
    return int(read_json(path)["step"]) if os.path.exists(path) else None


def _fmt(v: Any) -> str:
    return v if v == _ABSENT else json.dumps(v)


def _num_steps(cfg: dict) -> int:
    return int(cfg.get("train", {}).get("num_steps", 0))


def unsafe_reason(key: str) -> str | None:
    if key in CONTINUABLE:
        return None
    for prefix, reason in UNSAFE:
        if key == prefix or (prefix.endswith(".") and key.startswith(prefix)):
            return reason
    return None


def schedule_note(old: dict, new: dict, step: int) -> str:
    """What extending train.num_steps does to the learning-rate schedule (training/optimizer.py: warmup, then
    cosine decay over train.num_steps)."""
    from remix_jax.training.optimizer import OptimizerConfig, learning_rate_schedule

    o = new.get("optimizer", {})
    peak = float(o.get("adapter_lr", 0.0))

    def lr(total: int, at: int) -> float:
        cfg = OptimizerConfig(warmup_steps=int(o.get("warmup_steps", 0)), total_steps=total,
                              end_lr_fraction=float(o.get("end_lr_fraction", 0.0)))
        return float(learning_rate_schedule(peak, cfg)(at))

    n_old, n_new = _num_steps(old), _num_steps(new)
    return (f"the learning-rate schedule spans train.num_steps, so it now runs over {n_new} steps instead of "
            f"{n_old}: the adapter learning rate at step {step + 1} is {lr(n_new, step):.3g} (the {n_old}-step "
            f"schedule was at {lr(n_old, min(step, n_old)):.3g}); Adam's moments carry over")


# ------------------------------------------------------------------------------------------ rerun plan


@dataclasses.dataclass
class Plan:
    """What a (re)run of WORKDIR does. ``finished``: the run had finished (at ``step``); ``changes``: the
    accepted (key, old, new) changes; ``notes``: lines to print before training."""

    finished: bool = False
    step: int | None = None
    changes: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)

    @property
    def summary_only(self) -> bool:
        return self.finished and not self.changes


def _change_lines(changes) -> str:
    return "\n  ".join(f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, a, b in changes)


def plan_rerun(workdir: str, new: dict, continue_with_changes: bool = False, auto_keys=()) -> Plan:
    """Compare the config ``new`` (config_dict) with WORKDIR's record; raise RunConfigError when the run
    cannot go on under it (see the module docstring). Reads only. ``auto_keys``: keys the user left to
    "auto" (model dtypes, resolved per backend): a finished run whose record differs only there is the
    same run, looked at from another machine."""
    old = recorded_config(workdir)
    done = finished_step(workdir)
    if old is None:
        return Plan(finished=done is not None, step=done)
    changes = added_with_default(old, diff(old, new))
    steps = checkpoint_steps(workdir)
    trained = done if done is not None else (steps[-1] if steps else None)
    plan = Plan(finished=done is not None, step=trained, changes=changes)
    if not changes or (done is not None and all(k in auto_keys for k, _, _ in changes)):
        plan.changes = []
        return plan
    state = f"finished at step {done}" if done is not None else (
        f"trained to step {trained}" if trained is not None else "not trained yet")
    where = os.path.join(workdir, CONFIG)
    if not continue_with_changes:
        raise RunConfigError(
            f"{workdir} holds a run ({state}) with another config; differing keys (old -> new):\n  "
            + _change_lines(changes),
            f"rerun with the config of {where}, use a new --workdir, or pass {FLAG} to continue this run "
            "under the new config")
    if trained is None:
        plan.notes.append(f"no checkpoint yet: training starts at step 0 under the new config ({len(changes)} "
                          f"change(s); the previous config is kept beside {where})")
        return plan
    refused = []
    for key, a, b in changes:
        reason = unsafe_reason(key)
        if reason:
            refused.append(f"{key}: {_fmt(a)} -> {_fmt(b)}: {reason}")
    n_old, n_new = _num_steps(old), _num_steps(new)
    if n_new < trained:
        refused.append(f"train.num_steps: {n_old} -> {n_new}: the run has already trained {trained} steps")
    elif done is not None and n_new > done and done not in steps:
        refused.append(f"train.num_steps: {n_old} -> {n_new}: no checkpoint of step {done} is left in "
                       f"{os.path.join(workdir, 'checkpoints')} to continue from")
    if refused:
        raise RunConfigError(f"{workdir} ({state}) cannot continue under this config, even with {FLAG}:\n  "
                             + "\n  ".join(refused), "start a new --workdir for these changes")
    if done is not None and n_new == done:
        raise RunConfigError(
            f"{workdir} finished at step {done} and train.num_steps={n_new} adds no steps: nothing to continue "
            f"under the changed key(s) {', '.join(k for k, _, _ in changes)}",
            f"to train longer raise --config.train.num_steps; to score the run under other evaluation settings "
            f"use python -m remix_jax.evaluate --config=... --workdir={workdir} (it writes {workdir}/evals/)")
    if n_new > trained:
        plan.notes.append(f"continuing {workdir} from step {trained} to step {n_new}; "
                          + schedule_note(old, new, trained))
    others = [c for c in changes if c[0] != "train.num_steps"]
    if others:
        plan.notes.append(f"continuing under {len(others)} other changed key(s):\n  " + _change_lines(others))
    return plan


def check_writable(workdir: str) -> None:
    """Create WORKDIR and write a file into it: an OSError (read-only, no permission, no space) now, before
    any model is loaded."""
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_check.{os.getpid()}")
    with open(probe, "w") as f:
        f.write("ok\n")
    os.remove(probe)


def _next_config_number(workdir: str) -> int:
    n = 1
    while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
        n += 1
    return n


def apply_plan(workdir: str, config_json: str, plan: Plan) -> None:
    """Record the run's config (process 0 only): keep the replaced one and log the change, move a finished
    run's final results under eval_history/, write config.json last."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG)
    if plan.changes and os.path.exists(path):
        previous = f"config.{_next_config_number(workdir)}.json"
        shutil.copyfile(path, os.path.join(workdir, previous))
        line = {"time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "step": plan.step,
                "previous": previous, "changes": {k: [a, b] for k, a, b in plan.changes}}
        with open(os.path.join(workdir, CONFIG_CHANGES), "a") as f:
            f.write(json.dumps(line) + "\n")
        if plan.finished:
            keep = os.path.join(workdir, "eval_history", f"step_{plan.step}")
            moves = [(os.path.join(workdir, "eval"), os.path.join(keep, "eval")),
                     (os.path.join(workdir, RUN_COMPLETE), os.path.join(keep, RUN_COMPLETE))]
            for src, dst in moves:
                if os.path.exists(src) and os.path.exists(dst):
                    raise RunConfigError(f"{dst} exists: cannot keep the final results of step {plan.step} "
                                         "there", f"move {dst} away and rerun")
            os.makedirs(keep, exist_ok=True)
            for src, dst in moves:  # run_complete.json last: until then the run still reads as finished
                if os.path.exists(src):
                    os.replace(src, dst)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config_json)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ evaluations


def _eval_scalars(record: dict, task: str) -> dict[str, float]:
    m = record.get("metrics") or {}
    out = {}
    if task == "heldout" and isinstance(m.get("heldout_loss"), (int, float)):
        out["heldout_loss"] = float(m["heldout_loss"])
    elif isinstance(m.get("accuracy"), (int, float)):
        out[f"{task}/accuracy"] = float(m["accuracy"])
    return out


def _result_files(folder: str) -> dict[str, dict]:
    if not os.path.isdir(folder):
        return {}
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            try:
                out[name[:-len(".json")]] = read_json(os.path.join(folder, name))
            except (RunConfigError, OSError):
                continue
    return out


def evaluations(workdir: str) -> dict[int, dict[str, float]]:
    """{step: {"<task>/accuracy", "heldout_loss", ...}} of every evaluation of the run, read from its files:
    the "eval/..." values of WORKDIR/metrics.jsonl (a step's last row wins, so rows repeated by a resume count
    once), completed by the result files of WORKDIR/eval_history/step_<N>/eval/ and WORKDIR/eval/."""
    out: dict[int, dict[str, float]] = {}
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
                e = {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
                if e and "step" in row:
                    out.setdefault(int(row["step"]), {}).update(e)
    folders = []
    hist = os.path.join(workdir, "eval_history")
    if os.path.isdir(hist):
        folders += [os.path.join(hist, d, "eval") for d in os.listdir(hist) if d.startswith("step_")]
    folders.append(os.path.join(workdir, "eval"))
    for folder in folders:
        for task, record in _result_files(folder).items():
            if isinstance(record.get("step"), int):
                for k, v in _eval_scalars(record, task).items():
                    out.setdefault(record["step"], {}).setdefault(k, v)
    return dict(sorted(out.items()))


def eval_settings_differ(workdir: str, before: int, after: int) -> list[str]:
    """Eval-config keys that differ between the result files of the evaluations at ``before`` and ``after``
    (each records the config it ran under); [] when they agree or cannot be read."""
    def settings(step: int) -> dict | None:
        folders = [os.path.join(workdir, "eval_history", f"step_{step}", "eval"), os.path.join(workdir, "eval")]
        for folder in folders:
            for record in _result_files(folder).values():
                if record.get("step") == step and isinstance(record.get("config"), dict):
                    return record["config"].get("eval")
        return None

    a, b = settings(before), settings(after)
    if a is None or b is None:
        return []
    return [f"eval.{k}: {_fmt(x)} -> {_fmt(y)}" for k, x, y in diff(a, b)]


# ------------------------------------------------------------------------------------------ summary


def finished_summary(workdir: str) -> dict:
    """The summary of a finished run, read from its files (no model is loaded)."""
    done = read_json(os.path.join(workdir, RUN_COMPLETE))
    rows = []
    metrics = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(metrics):
        with open(metrics) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    train_rows = [r for r in rows if "loss" in r]
    export = os.path.join(workdir, "export")
    return {"step": done["step"], "metrics": train_rows[-1] if train_rows else {},
            "export": export if os.path.isdir(export) else None, "eval": evaluations(workdir), "complete": True,
            "wall_s": done.get("wall_s"), "compile_s": done.get("compile_s"), "skipped": True, "workdir": workdir}


def _fmt_list(values) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def format_summary(summary: dict) -> str:
    """The human-readable end-of-run report: loss and accuracy before (step 0) / after (the last step),
    routing ESS per block, where the outputs are."""
    lines = ["", "== run summary " + "=" * 60]
    wd = summary.get("workdir", "")
    if summary.get("skipped"):
        lines.append(f"already finished ({os.path.join(wd, RUN_COMPLETE)}): not trained again")
    m = summary.get("metrics") or {}
    evals = {int(k): v for k, v in (summary.get("eval") or {}).items()}
    step = int(summary["step"])
    first, last = evals.get(0, {}), evals.get(step, {})
    wall = f", wall time {summary['wall_s']:.0f} s" if summary.get("wall_s") is not None else ""
    if wall and summary.get("compile_s") is not None:
        wall += f" ({summary['compile_s']:.0f} s of it compiling)"
    lines.append(f"steps: {step}" + wall)
    if "loss" in m:
        lines.append(f"training loss (last logged step {m.get('step', step)}): {m['loss']:.4f}")
    if "heldout_loss" in first or "heldout_loss" in last:
        b, a = first.get("heldout_loss"), last.get("heldout_loss")
        lines.append("held-out loss: before " + (f"{b:.4f}" if b is not None else "-")
                     + " -> after " + (f"{a:.4f}" if a is not None else "-"))
    for key in sorted({k for e in (first, last) for k in e if k.endswith("/accuracy")}):
        b, a = first.get(key), last.get(key)
        lines.append(f"{key.split('/')[0]} accuracy: before "
                     + (f"{100 * b:.2f}%" if b is not None else "-")
                     + " -> after " + (f"{100 * a:.2f}%" if a is not None else "-"))
    if first and last and wd:
        changed = eval_settings_differ(wd, 0, step)
        if changed:
            lines.append("note: before and after ran under different evaluation settings ("
                         + "; ".join(changed[:4]) + (" ..." if len(changed) > 4 else "") + ")")
    for key, name in (("routing/ess_softmax_per_block", "softmax over all n"),
                      ("routing/ess_applied_per_block", "applied weights")):
        if isinstance(m.get(key), list):
            lines.append(f"routing ESS per block ({name}, last logged step): {_fmt_list(m[key])}")
    for key in sorted(k for k in last if k.endswith("/ess_applied")):
        lines.append(f"routing ESS of the weights applied on {key.split('/')[0]} (mean over blocks, "
                     f"top-k inference): {last[key]:.2f}")
    outputs = [("metrics", "metrics.jsonl"), ("evaluation", "eval"), ("adapters", "export"),
               ("checkpoints", "checkpoints"), ("config", CONFIG), ("finished marker", RUN_COMPLETE)]
    lines.append("outputs:")
    for label, rel in outputs:
        p = os.path.join(wd, rel)
        if os.path.exists(p):
            lines.append(f"  {label:<16} {p}")
    return "\n".join(lines)
