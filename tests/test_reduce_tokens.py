"""Stage 6, reduce, for token taps: avg/max/first/last with a padding mask, against loops."""

from __future__ import annotations

import numpy as np
import pytest

import layertap
from layertap.io.reduce import (
    REDUCERS,
    check_reducer,
    parse_pool_options,
    reduce,
    reduced_shape,
    resolve_pool,
)

DIM = 5
# Real tokens per row: a full row, a row of only padding, and rows of other lengths.
LENGTHS = [8, 0, 3, 1, 6]


# -- plain-loop oracles (one row, one token at a time) ------------------------------


def oracle(name: str, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The reducer ``name`` over a ``(batch, tokens, dim)`` batch, written as loops."""
    batch, tokens, dim = x.shape
    out = np.zeros((batch, dim), dtype=np.float64)
    for b in range(batch):
        real = [t for t in range(tokens) if mask is None or mask[b, t]]
        if name == "first":
            out[b] = x[b, 0]
            continue
        if not real:
            continue  # a row with no real token stays zeros
        for d in range(dim):
            values = [float(x[b, t, d]) for t in real]
            if name == "avg":
                out[b, d] = sum(values) / len(values)
            elif name == "max":
                out[b, d] = max(values)
            else:  # last: the highest real index
                out[b, d] = values[-1]
    return out


def right_padded(lengths: list[int], tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch whose row ``i`` has ``lengths[i]`` real tokens, then garbage padding."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(len(lengths), tokens, DIM)).astype(np.float32)
    mask = np.zeros((len(lengths), tokens), dtype=bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return x, mask


def repad(x: np.ndarray, mask: np.ndarray, tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The same real tokens padded (on the right) to ``tokens``, with new garbage."""
    rng = np.random.default_rng(seed)
    y = (rng.normal(size=(len(x), tokens, DIM)) * 1e3).astype(x.dtype)
    m = np.zeros((len(x), tokens), dtype=mask.dtype)
    for b in range(len(x)):
        n = int(mask[b].sum())
        y[b, :n] = x[b, :n]
        m[b, :n] = mask[b, :n]
    return y, m


TOKEN_REDUCERS = ["avg", "max", "first", "last"]


# -- with and without a mask ------------------------------------------------------


@pytest.mark.parametrize("name", TOKEN_REDUCERS)
@pytest.mark.parametrize("mask_dtype", [bool, np.int32])
def test_right_padding_matches_loops(name: str, mask_dtype: type) -> None:
    x, mask = right_padded(LENGTHS, 8, seed=0)
    got = reduce(name, x, mask.astype(mask_dtype))
    assert got.shape == (len(LENGTHS), DIM)
    np.testing.assert_allclose(got, oracle(name, x, mask), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", TOKEN_REDUCERS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_masks_any_layout_match_loops(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 9, DIM)).astype(np.float32)
    mask = rng.random((6, 9)) < 0.5
    mask[0] = False  # all padding
    mask[1] = True  # no padding
    got = reduce(name, x, mask)
    np.testing.assert_allclose(got, oracle(name, x, mask), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", TOKEN_REDUCERS)
def test_without_a_mask_every_token_counts(name: str) -> None:
    x, _ = right_padded(LENGTHS, 8, seed=4)
    np.testing.assert_allclose(reduce(name, x), oracle(name, x, None), rtol=1e-6, atol=1e-6)


def test_without_a_mask_first_and_last_are_the_ends() -> None:
    x, _ = right_padded(LENGTHS, 8, seed=5)
    np.testing.assert_array_equal(reduce("first", x), x[:, 0])
    np.testing.assert_array_equal(reduce("cls", x), x[:, 0])
    np.testing.assert_array_equal(reduce("last", x), x[:, -1])


def test_a_row_with_no_real_token_gives_zeros() -> None:
    x, mask = right_padded([0, 2], 4, seed=6)
    x[0] = np.nan  # padding garbage never leaks through
    for name in ["avg", "max", "last"]:
        got = reduce(name, x, mask)
        np.testing.assert_array_equal(got[0], np.zeros(DIM, np.float32))
        assert np.isfinite(got[1]).all()


def test_first_ignores_the_mask() -> None:
    x, mask = right_padded(LENGTHS, 8, seed=7)
    left = mask[:, ::-1].copy()  # left padding: position 0 is padding for short rows
    np.testing.assert_array_equal(reduce("first", x, left), x[:, 0])


def test_last_takes_the_highest_real_index_under_left_padding() -> None:
    x, mask = right_padded(LENGTHS, 8, seed=8)
    left = mask[:, ::-1].copy()
    got = reduce("last", x, left)
    for b, n in enumerate(LENGTHS):
        expected = x[b, -1] if n else np.zeros(DIM, np.float32)
        np.testing.assert_array_equal(got[b], expected)


# -- the padded length does not matter ------------------------------------------------


@pytest.mark.parametrize("name", TOKEN_REDUCERS)
def test_result_does_not_depend_on_the_padded_length(name: str) -> None:
    x, mask = right_padded(LENGTHS, 8, seed=9)
    x8, m8 = repad(x, mask, 8, seed=10)
    x13, m13 = repad(x, mask, 13, seed=11)
    np.testing.assert_array_equal(x8[mask], x13[:, :8][mask])  # same real tokens
    a, b = reduce(name, x8, m8), reduce(name, x13, m13)
    if name == "first":
        # The mask does not change ``first``: a row of only padding gives its padding.
        real = mask.any(axis=1)
        a, b = a[real], b[real]
        x8, m8 = x8[real], m8[real]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a, oracle(name, x8, m8), rtol=1e-6, atol=1e-6)


# -- taps the mask does not fit ---------------------------------------------------------


@pytest.mark.parametrize("name", ["avg", "max"])
def test_rank_4_tap_ignores_the_mask(name: str) -> None:
    rng = np.random.default_rng(12)
    x = rng.normal(size=(3, 4, 4, DIM)).astype(np.float32)
    mask = np.zeros((3, 4), dtype=bool)  # shape matches x.shape[:2], but x is rank 4
    np.testing.assert_array_equal(reduce(name, x, mask), reduce(name, x))


@pytest.mark.parametrize("name", TOKEN_REDUCERS)
def test_rank_3_tap_on_another_token_axis_ignores_the_mask(name: str) -> None:
    x, _ = right_padded(LENGTHS, 8, seed=13)
    mask = np.zeros((len(LENGTHS), 6), dtype=bool)  # 6 tokens, the tap has 8
    np.testing.assert_array_equal(reduce(name, x, mask), reduce(name, x))
    other_batch = np.zeros((2, 8), dtype=bool)
    np.testing.assert_array_equal(reduce(name, x, other_batch), reduce(name, x))


@pytest.mark.parametrize("name", ["keep", "flatten"])
def test_keep_and_flatten_ignore_the_mask(name: str) -> None:
    x, mask = right_padded(LENGTHS, 8, seed=14)
    np.testing.assert_array_equal(reduce(name, x, mask), reduce(name, x))


def test_rank_2_tap_ignores_the_mask_for_avg_and_max() -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    mask = np.zeros((2, 3), dtype=bool)
    assert reduce("avg", x, mask) is x
    assert reduce("max", x, mask) is x


# -- dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOKEN_REDUCERS)
@pytest.mark.parametrize("masked", [False, True])
def test_dtype_is_kept(name: str, masked: bool) -> None:
    x, mask = right_padded(LENGTHS, 8, seed=15)
    x16 = x.astype(np.float16)
    got = reduce(name, x16, mask if masked else None)
    assert got.dtype == np.float16
    expected = oracle(name, x16.astype(np.float64), mask if masked else None)
    np.testing.assert_allclose(got.astype(np.float64), expected, rtol=2e-3, atol=2e-3)


def test_integer_taps_keep_their_dtype_under_a_mask() -> None:
    x = np.array([[[1, -5], [3, -7], [100, 100]]], dtype=np.int32)
    mask = np.array([[1, 1, 0]])
    assert reduce("max", x, mask).tolist() == [[3, -5]]
    assert reduce("avg", x, mask).tolist() == [[2, -6]]
    assert reduce("last", x, mask).dtype == np.int32


# -- shapes known before a batch runs -----------------------------------------------------


def test_reduced_shape_of_token_reducers() -> None:
    assert reduced_shape("first", (None, None, 768)) == (None, 768)
    assert reduced_shape("cls", (None, 12, 768)) == (None, 768)
    assert reduced_shape("last", (4, 12, 64)) == (4, 64)
    assert reduced_shape("avg", (None, None, 64)) == (None, 64)
    x, mask = right_padded(LENGTHS, 8, seed=16)
    for name in TOKEN_REDUCERS:
        assert reduce(name, x, mask).shape == reduced_shape(name, x.shape)


@pytest.mark.parametrize("name", ["first", "cls", "last"])
@pytest.mark.parametrize("shape", [(None, 768), (None, 4, 4, 8), (None,)])
def test_check_reducer_rejects_taps_that_are_not_tokens(
    name: str, shape: tuple[int | None, ...]
) -> None:
    with pytest.raises(layertap.BadSpecError) as info:
        check_reducer(name, shape, "pooled")
    message = str(info.value)
    assert str(shape) in message
    assert "'pooled'" in message
    assert "(batch, tokens, dim)" in message
    with pytest.raises(layertap.BadSpecError, match=r"\(batch, tokens, dim\)"):
        reduced_shape(name, shape)


def test_reduce_rejects_first_and_last_on_a_batch_that_is_not_tokens() -> None:
    x = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(layertap.BadSpecError, match=r"\(2, 4, 4, 3\)"):
        reduce("last", x)
    with pytest.raises(layertap.BadSpecError, match=r"\(2, 3\)"):
        reduce("first", np.zeros((2, 3), np.float32))


def test_check_reducer_accepts_what_fits() -> None:
    check_reducer("first", (None, None, 768), "enc")
    check_reducer("last", (2, 7, 16), "dec")
    for name in ["keep", "flatten", "avg", "max", "gap"]:
        check_reducer(name, (None, 768), "pooled")
        check_reducer(name, (None, 4, 4, 8), "conv")
    with pytest.raises(layertap.BadSpecError, match="'median'.*'first'"):
        check_reducer("median", (None, 4, 8), "enc")


# -- names --------------------------------------------------------------------------------


def test_token_reducer_names_resolve() -> None:
    assert REDUCERS["first"] == REDUCERS["cls"] == "first"
    assert REDUCERS["last"] == "last"
    assert resolve_pool("cls", ["a"]) == {"a": "first"}
    assert resolve_pool({"*": "last", "b": "first"}, ["a", "b"]) == {"a": "last", "b": "first"}
    assert parse_pool_options(["last", "enc=cls"]) == {"*": "last", "enc": "first"}
