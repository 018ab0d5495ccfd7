"""A preprocessing function that takes its time, so a test can stop a run midway.

Used as ``--preprocess tests.slow_inputs:rescale_slowly`` (the repository root on
``PYTHONPATH``, so Ray's workers import it too).
"""

from __future__ import annotations

import time

import numpy as np

SECONDS = 0.4


def rescale_slowly(x: np.ndarray) -> np.ndarray:
    """``x / 255``, after :data:`SECONDS` of sleep."""
    time.sleep(SECONDS)
    out: np.ndarray = x / np.float32(255.0)
    return out
