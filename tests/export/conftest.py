"""Fixtures of the export tests (helpers.py holds the functions they share)."""

import pytest

from tests.export.helpers import tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """kind ("llama", "qwen2", "tied") -> (HF directory, ModelConfig, our float32 params)."""
    root = tmp_path_factory.mktemp("tiny_hf")
    return lambda kind: tiny_checkpoint(kind, root)
