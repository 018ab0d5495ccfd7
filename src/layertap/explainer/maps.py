"""Stage 6, explain: class-activation and attribution maps from activations and gradients.

Keras-free numpy: every function takes what :meth:`layertap.Extractor.gradients` returns
(activations ``A`` and gradients ``G`` of one score per row, channels last,
``(n, h, w, c)``) and gives one map per row, ``(n, h, w)``. The formulas:

* Grad-CAM (Selvaraju et al. 2017): ``relu(sum_k mean_ij(G_k) A_k)``;
* Grad-CAM++ (Chattopadhay et al. 2018), with the paper's exponential-score closed form
  ``a_k^ij = G^2 / (2 G^2 + sum_ab(A_k) G^3)``, each channel's ``a_k`` divided by its sum
  over positions as the authors' code (and tf-keras-vis) do, ``w_k = sum_ij a_k^ij
  relu(G_k^ij)``, map ``relu(sum_k w_k A_k)``;
* LayerCAM (Jiang et al. 2021): ``relu(sum_k relu(G_k) A_k)``;
* gradient x activation: ``relu(sum_k G_k A_k)``;
* Score-CAM (Wang et al. 2020): ``relu(sum_k s_k A_k)``, ``s_k`` the score of the input
  masked by channel k's normalised, upsampled map (:func:`weighted_sum`);
* attention rollout (Abnar & Zuidema 2020; :func:`attention_rollout`): per block the
  heads fused, ``0.5 A + 0.5 I`` with rows renormalised, multiplied from the first block
  on; the class token's row over the patches is the map (:func:`patch_grid`).

:func:`normalize` scales each map to [0, 1]; :func:`upsample` resizes maps bilinearly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

__all__ = [
    "HEAD_FUSIONS",
    "attention_rollout",
    "gradcam",
    "gradcam_plus_plus",
    "grad_times_activation",
    "layercam",
    "normalize",
    "patch_grid",
    "upsample",
    "weighted_sum",
]


def _relu(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.maximum(x, 0.0)
    return out


def _check(acts: np.ndarray, grads: np.ndarray | None = None) -> None:
    if acts.ndim != 4 or (grads is not None and grads.shape != acts.shape):
        shapes = f"{acts.shape}" + ("" if grads is None else f" and {grads.shape}")
        raise ValueError(
            f"class-activation maps need spatial activations (n, h, w, channels), got {shapes}"
        )


def weighted_sum(acts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``relu(sum_k weights[n, k] * acts[n, :, :, k])``: a CAM from per-channel weights.

    Example:
        >>> a = np.ones((1, 2, 2, 3)); weighted_sum(a, np.array([[1.0, -2.0, 0.5]]))[0]
        array([[0., 0.],
               [0., 0.]])
    """
    _check(acts)
    return _relu(np.einsum("nhwc,nc->nhw", acts, weights))


def gradcam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM: channels weighted by their mean gradient.

    Example:
        >>> a = np.arange(8.0).reshape(1, 2, 2, 2); g = np.ones_like(a)
        >>> gradcam(a, g)[0]
        array([[ 1.,  5.],
               [ 9., 13.]])
    """
    _check(acts, grads)
    return weighted_sum(acts, grads.mean(axis=(1, 2)))


def gradcam_plus_plus(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM++: channels weighted by their positive gradients, each position's
    weight from the closed form for an exponential score, normalised per channel.

    Example:
        >>> a = np.ones((1, 2, 2, 1)); g = np.full_like(a, 0.5)
        >>> gradcam_plus_plus(a, g)[0]  # a_ij = 1/4 after normalising; w = 4 * 1/4 * 0.5
        array([[0.5, 0.5],
               [0.5, 0.5]])
    """
    _check(acts, grads)
    g2, g3 = grads**2, grads**3
    denominator = 2.0 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g3
    alpha = g2 / np.where(denominator != 0.0, denominator, 1.0)
    total = alpha.sum(axis=(1, 2), keepdims=True)
    alpha = alpha / np.where(total != 0.0, total, 1.0)
    return weighted_sum(acts, (alpha * _relu(grads)).sum(axis=(1, 2)))


def layercam(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """LayerCAM: each position of each channel weighted by its own positive gradient.

    Example:
        >>> a = np.ones((1, 1, 2, 2)); g = np.array([[[[1.0, -1.0], [2.0, 0.5]]]])
        >>> layercam(a, g)[0]
        array([[1. , 2.5]])
    """
    _check(acts, grads)
    return _relu((_relu(grads) * acts).sum(axis=-1))


def grad_times_activation(acts: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Gradient x activation, summed over channels, positive part.

    Example:
        >>> a = np.ones((1, 1, 2, 2)); g = np.array([[[[1.0, -3.0], [2.0, 0.5]]]])
        >>> grad_times_activation(a, g)[0]
        array([[0. , 2.5]])
    """
    _check(acts, grads)
    return _relu((grads * acts).sum(axis=-1))


def normalize(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] by its own minimum and maximum (a flat map gives zeros).

    Example:
        >>> normalize(np.array([[[2.0, 4.0]], [[3.0, 3.0]]])).tolist()
        [[[0.0, 1.0]], [[0.0, 0.0]]]
    """
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    out: np.ndarray = (maps - low) / np.where(span > 0, span, 1.0)
    return out.astype(np.float32)


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps ``(n, h, w)`` resized to ``size`` = (height, width), bilinear (Pillow).

    Example:
        >>> upsample(np.ones((2, 3, 3)), (8, 6)).shape
        (2, 8, 6)
    """
    height, width = size
    if maps.shape[1:] == (height, width):
        return maps.astype(np.float32)
    out = np.empty((maps.shape[0], height, width), np.float32)
    for i, m in enumerate(maps):
        image = Image.fromarray(np.asarray(m, np.float32), mode="F")
        out[i] = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))
    return out


#: How :func:`attention_rollout` fuses the heads of one block: name -> reduction.
HEAD_FUSIONS: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "max": np.max, "min": np.min}


def attention_rollout(
    attentions: list[np.ndarray],
    *,
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    keep: int = 0,
) -> np.ndarray:
    """Attention rollout over blocks: ``(n, tokens, tokens)``, each row summing to 1.

    ``attentions`` are the blocks' probabilities from the first block on, each
    ``(n, heads..., tokens, tokens)`` (every axis between the batch and the last two is a
    head axis). Per block the heads are fused (``head_fusion``: mean, max or min); with
    ``discard_ratio`` > 0 that share of the smallest weights of each row is set to 0,
    column ``keep`` (the class token) never; then ``0.5 A + 0.5 I``, rows renormalised,
    and ``joint = aug_l @ joint`` from the first block on (the paper's
    ``compute_joint_attention``).

    Example:
        >>> eye = np.eye(3)[None, None]  # one row, one head: attention to itself only
        >>> attention_rollout([eye, eye])[0].tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
        >>> uniform = np.full((1, 2, 2, 2), 0.5)
        >>> attention_rollout([uniform])[0].tolist()
        [[0.75, 0.25], [0.25, 0.75]]
    """
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(f"head_fusion {head_fusion!r} is not one of {', '.join(HEAD_FUSIONS)}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio!r}")
    if not attentions:
        raise ValueError("attention_rollout needs the probabilities of at least one block")
    joint = np.eye(np.shape(attentions[0])[-1])
    for block in attentions:
        a = np.asarray(block, np.float64)
        if a.ndim < 3 or a.shape[-1] != a.shape[-2]:
            raise ValueError(
                f"rollout needs self-attention (n, heads, tokens, tokens); got {a.shape}"
            )
        heads = tuple(range(1, a.ndim - 2))
        fused = HEAD_FUSIONS[head_fusion](a, axis=heads) if heads else a
        if discard_ratio > 0.0:
            fused = _discard(fused, discard_ratio, keep)
        tokens = fused.shape[-1]
        aug = 0.5 * fused + 0.5 * np.eye(tokens)
        aug = aug / aug.sum(axis=-1, keepdims=True)
        joint = aug @ joint
    rolled: np.ndarray = joint.astype(np.float32)
    return rolled


def _discard(a: np.ndarray, ratio: float, keep: int) -> np.ndarray:
    """``a`` with the smallest ``ratio`` of each row's weights zeroed (column ``keep`` kept)."""
    out: np.ndarray = a.copy()
    tokens = a.shape[-1]
    drop = int(ratio * tokens)
    if drop == 0:
        return out
    ranked = np.argsort(a, axis=-1)  # ascending per row
    rows = np.ones_like(a, dtype=bool)
    lowest = ranked[..., :drop]
    np.put_along_axis(rows, lowest, False, axis=-1)
    rows[..., keep] = True
    kept: np.ndarray = np.where(rows, out, 0.0)
    return kept


def patch_grid(
    tokens: int, image_size: tuple[int, int], prefix: int | None = None
) -> tuple[int, tuple[int, int]]:
    """``(prefix tokens, (rows, cols))``: how a sequence of ``tokens`` lays over an image.

    The patch tokens come last, a ``rows x cols`` grid in row order with the image's
    aspect ratio; before them ``prefix`` extra tokens (a class token, DINOv2's
    registers). ``prefix=None`` takes the fewest (at least one) that leave such a grid.

    Example:
        >>> patch_grid(197, (224, 224))  # ViT-B/16: a class token and 14 x 14 patches
        (1, (14, 14))
        >>> patch_grid(1 + 4 + 256, (224, 224))  # DINOv2 with four registers
        (5, (16, 16))
        >>> patch_grid(1 + 2 * 3, (32, 48))
        (1, (2, 3))
    """
    height, width = image_size
    starts = range(1, tokens) if prefix is None else [prefix]
    for extra in starts:
        patches = tokens - extra
        for rows in range(1, patches + 1):
            cols, rest = divmod(patches, rows)
            if rest == 0 and rows * width == cols * height:
                return extra, (rows, cols)
    which = "any number of prefix tokens" if prefix is None else f"{prefix} prefix tokens"
    raise ValueError(
        f"{tokens} tokens do not lay over a {height}x{width} image as a patch grid with "
        f"{which}; pass prefix_tokens="
    )
