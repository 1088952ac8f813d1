"""Fixtures for the training tests: a tiny random decoder with adapters, and a synthetic batch."""

import functools

import jax
import pytest

from remix_jax.training import loop
from remix_jax.training.synthetic import SyntheticLoader


def tiny_config(method: str = "remix", **train):
    """configs/smoke.py with small steps; ``train`` overrides config.train fields."""
    import importlib.util
    import pathlib

    spec = importlib.util.spec_from_file_location(
        "smoke_config", pathlib.Path(__file__).resolve().parents[2] / "configs" / "smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config(method)
    c.data.batch_size = 8
    c.data.max_length = 16
    c.train.progress = False
    c.train.log_every = 1
    c.mesh.data = 1
    for k, v in train.items():
        c.train[k] = v
    return c


def perturbed(trainable, seed=0, scale=0.3):
    """Random non-zero adapters (B starts at zero, which makes every routing sample identical and the
    gradient of A exactly zero, i.e. pure rounding noise that Adam would amplify). One jitted program per tree
    (op-by-op dispatch of the per-leaf draws cost about a second per call)."""
    return _perturbed(trainable, jax.random.key(seed), scale)


@functools.partial(jax.jit, static_argnums=2)
def _perturbed(trainable, key, scale):
    import numpy as np

    leaves, tree = jax.tree.flatten(trainable)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) / np.sqrt(x.shape[-2])
                                     for x, k in zip(leaves, keys, strict=True)])


@pytest.fixture(scope="session")
def perturb():
    return perturbed


@pytest.fixture(scope="session")
def make_config():
    return tiny_config


@pytest.fixture(scope="session")
def remix_bundle():
    return loop.build_model_bundle(tiny_config("remix"))


@pytest.fixture(scope="session")
def lora_bundle():
    return loop.build_model_bundle(tiny_config("lora", num_samples=1))


@pytest.fixture(scope="session")
def batch():
    b = next(SyntheticLoader(8, 16, 256, seed=3))
    return jax.tree.map(jax.numpy.asarray, b)
