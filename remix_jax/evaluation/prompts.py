"""Few-shot and zero-shot prompts for GSM8K and the LLM-Adapters multiple-choice tasks (ARC, BoolQ, OBQA).

A prompt is a list of demonstrations, each rendered with the same plain format the models are trained on
(``### Instruction:\\n{prompt}\\n\\n### Response:\\n`` + response), separated by a blank line, then the query
rendered with the format and left open for the model. Shots come from the task's train split, picked with a
fixed seed, and never include the query itself. Zero-shot is ``n_shots=0`` (the query alone).
The paper's shot counts: GSM8K 4, ARC-Challenge 5 (HumanEval 4, see ``humaneval.few_shot_prompt``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from remix_jax.data.templates import DEFAULT_PLAIN_FORMAT
from remix_jax.evaluation import gsm8k

PAPER_SHOTS = {"gsm8k": 4, "arc_c": 5, "humaneval": 4}
SHOT_SEPARATOR = "\n\n"


def pick_shots(num_rows: int, n_shots: int, seed: int = 0) -> list[int]:
    """Indices of ``n_shots`` distinct train rows, fixed by ``seed``."""
    if n_shots > num_rows:
        raise ValueError(f"asked for {n_shots} shots from a split of {num_rows} rows")
    return random.Random(seed).sample(range(num_rows), n_shots)


def few_shot_prompt(shots: Sequence[tuple[str, str]], query: str, fmt: str = DEFAULT_PLAIN_FORMAT) -> str:
    """shots: (prompt, response) pairs -> one prompt string ending where the query's response begins."""
    if "{prompt}" not in fmt:
        raise ValueError(f"prompt format {fmt!r} has no {{prompt}} field")
    demos = [fmt.format(prompt=p) + r.strip() + SHOT_SEPARATOR for p, r in shots]
    return "".join(demos) + fmt.format(prompt=query)


def stop_sequences(fmt: str = DEFAULT_PLAIN_FORMAT) -> list[str]:
    """Strings at which generation should stop: the beginning of a next demonstration."""
    head = fmt.split("{prompt}")[0].strip()
    return [SHOT_SEPARATOR + head] if head else [SHOT_SEPARATOR]


def gsm8k_shots(train_rows: Sequence[dict], n_shots: int = 4, seed: int = 0) -> list[tuple[str, str]]:
    """Demonstrations from GSM8K train rows ({question, answer}); answers end with 'The answer is N.'"""
    return [(train_rows[i]["question"], gsm8k.reference_to_chain_of_thought(train_rows[i]["answer"]))
            for i in pick_shots(len(train_rows), n_shots, seed)]


def gsm8k_prompt(question: str, shots: Sequence[tuple[str, str]], fmt: str = DEFAULT_PLAIN_FORMAT) -> str:
    return few_shot_prompt(shots, question, fmt)


def llm_adapters_query(row: dict) -> str:
    """The prompt of an LLM-Adapters row: instruction, plus its input when non-empty."""
    inp = str(row.get("input") or "").strip()
    return f"{row['instruction']}\n\n{inp}" if inp else str(row["instruction"])


def multiple_choice_shots(train_rows: Sequence[dict], n_shots: int = 5,
                          seed: int = 0) -> list[tuple[str, str]]:
    """Demonstrations from LLM-Adapters train rows ({instruction, input, output})."""
    return [(llm_adapters_query(train_rows[i]), str(train_rows[i]["output"]))
            for i in pick_shots(len(train_rows), n_shots, seed)]


def multiple_choice_prompt(row: dict, shots: Sequence[tuple[str, str]],
                           fmt: str = DEFAULT_PLAIN_FORMAT) -> str:
    return few_shot_prompt(shots, llm_adapters_query(row), fmt)
