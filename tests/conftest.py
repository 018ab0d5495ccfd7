"""Shared fixtures: tiny models built inline, and an oracle helper."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from keras import layers


def to_numpy(x: object) -> np.ndarray:
    """Any backend tensor -> numpy (the oracle side of a comparison)."""
    return np.asarray(keras.ops.convert_to_numpy(x))


def assert_close(actual: np.ndarray, expected: object, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(actual, to_numpy(expected), rtol=tol, atol=tol)


@pytest.fixture(autouse=True)
def _seed() -> None:
    keras.utils.set_random_seed(0)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def nested_model() -> keras.Model:
    """Three levels: a Sequential inside a Functional inside a Sequential head.

    top (Sequential)
    ├── mid (Functional)
    │   ├── inner (Sequential): d1, d2
    │   ├── split (two outputs)
    │   └── add
    └── head
    """
    inner = keras.Sequential(
        [keras.Input((6,)), layers.Dense(5, name="d1"), layers.Dense(4, name="d2")],
        name="inner",
    )
    mid_in = keras.Input((6,), name="mid_in")
    h = inner(mid_in)
    p, q = Split(name="split")(h)
    mid = keras.Model(mid_in, layers.Add(name="add")([p, q]), name="mid")
    return keras.Sequential([keras.Input((6,)), mid, layers.Dense(3, name="head")], name="top")


@pytest.fixture
def siamese_model() -> keras.Model:
    """An encoder sub-model called on two inputs, and a layer shared by both branches."""
    enc_in = keras.Input((8,), name="enc_in")
    h = layers.Dense(4, activation="relu", name="conv")(enc_in)
    encoder = keras.Model(enc_in, layers.Dense(2, name="proj")(h), name="encoder")
    a = keras.Input((8,), name="a")
    b = keras.Input((8,), name="b")
    shared = layers.Dense(3, name="shared")
    out = layers.Concatenate(name="cat")([shared(encoder(a)), shared(encoder(b))])
    return keras.Model([a, b], layers.Dense(1, name="score")(out), name="siamese")


@keras.saving.register_keras_serializable(package="layertap_tests")
class Split(layers.Layer):
    """A layer with two outputs: the first two features and the rest."""

    def call(self, x: object) -> tuple[object, object]:
        return x[:, :2], x[:, 2:]  # type: ignore[index]

    def compute_output_shape(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
        return (shape[0], 2), (shape[0], shape[1] - 2)
