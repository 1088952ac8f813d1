"""A key added to the config schema after a run started is no change when the new config keeps its default."""

import json

import pytest

from remix_jax import rundir
from remix_jax.run_config import default_config, eval_config


def _full_config():
    c = default_config()
    c.eval = eval_config()
    return rundir.config_dict(c)


def _workdir(tmp_path, record):
    (tmp_path / rundir.CONFIG).write_text(json.dumps(record))
    return str(tmp_path)


def test_key_missing_from_the_record_at_its_default_is_no_change(tmp_path):
    new = _full_config()
    old = json.loads(json.dumps(new))
    del old["train"]["credit"]  # a run recorded before train.credit existed
    assert rundir.plan_rerun(_workdir(tmp_path, old), new).changes == []


def test_key_missing_from_the_record_set_otherwise_is_a_change(tmp_path):
    new = _full_config()
    old = json.loads(json.dumps(new))
    del old["train"]["credit"]
    new["train"]["credit"] = "causal"
    with pytest.raises(rundir.RunConfigError, match=r"train\.credit: .*causal"):
        rundir.plan_rerun(_workdir(tmp_path, old), new)


def test_unknown_key_and_removed_key_are_changes(tmp_path):
    new = _full_config()
    old = json.loads(json.dumps(new))
    new["train"]["not_in_the_schema"] = 1
    del new["train"]["credit"]  # present in the record, absent now: a change whatever the default
    changes = rundir.added_with_default(old, rundir.diff(old, new))
    assert [k for k, _, _ in changes] == ["train.credit", "train.not_in_the_schema"]
