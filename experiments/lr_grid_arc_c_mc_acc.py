"""lr_grid_arc_c_mc.py's grid (the letter-form ARC-Challenge column, every method at the adapter learning rates 1e-4,
3e-4, 1e-3, one seed, trained on the carve's train rows), also scored by the accuracy on the carve's validation
rows: ``arc_c_mc_heldout`` (configs/arc_c_mc.py) ranks the letters of each validation question exactly as
``arc_c_mc_0shot`` ranks a test question's. ``experiments/select_lr.py --maximize`` then picks each method's rate
by that accuracy instead of by the validation loss.

Why: in the letter form the validation losses of every method sat within 3% of a uniform guess while the test
accuracies at the rates they chose ran from chance to 41% (experiments/README.md): a model confidently wrong on
some questions pays more in loss than it gains on those it gets right, so the loss is a poor guide to the rate
when accuracy is what the table reports. The validation rows are never the test split. At 0.5B the three-point grid
chose its lowest rate for every method, so the committed grid is widened with $REMIX_LR_GRID (the command below).

    REMIX_LR_GRID=1e-5,3e-5,1e-4,3e-4,1e-3 REMIX_TEMPLATE=plain \\
    REMIX_MODEL_PATH=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf REMIX_ARC_C_VAL_DIR=DATA/arc_c_val \\
    python -m remix_jax.sweep --sweep=experiments/lr_grid_arc_c_mc_acc.py \\
        --results_root=experiments/results/qwen0.5b --parallel=6 --devices=0
    python experiments/select_lr.py --results=experiments/results/qwen0.5b/lr_grid_arc_c_mc_acc \\
        --metric=arc_c_mc_heldout/accuracy --maximize --outcomes=arc_c_mc_heldout \\
        --out=experiments/results/qwen0.5b/lr_grid_arc_c_mc_acc/selected_lr.json

``--outcomes`` adds, for each rate not chosen, its paired difference to the choice on the validation questions and
that difference's standard error, and lists the rates within two standard errors: on 200 rows those errors are
2.5-5 points.
"""

from table1 import ARC_C_MC, lr_grid_sweep


def get_sweep():
    return lr_grid_sweep(ARC_C_MC, score_validation=True)
