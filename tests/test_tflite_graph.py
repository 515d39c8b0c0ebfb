"""The TFLite graph runner's own rules, without any model file: SAME padding as TensorFlow
computes it, the STFT framing table seen as a strided view, and bytes that are not a model.
(tests/test_birdnet.py runs whole graphs against the LiteRT interpreter.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pam.detect.tflite_graph import TFLiteError, read_tflite
from pam.detect.tflite_ops import KERNELS, frame_step, same_padding


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (96, 3, 2, (0, 1)),   # even input, stride 2: the extra pad goes after
    (95, 3, 2, (1, 1)),
    (511, 8, 2, (3, 4)),
    (10, 1, 1, (0, 0)),
    (5, 4, 1, (1, 2)),
])
def test_same_padding_matches_tensorflow(size, kernel, stride, expected):
    before, after = same_padding(size, kernel, stride, 1)
    assert (before, after) == expected
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)


def test_frame_table_is_recognised_and_gathered_as_a_view():
    idx = (np.arange(5)[:, None] * 3 + np.arange(4)[None, :]).astype(np.int32)
    assert frame_step(idx) == 3
    broken = idx.copy()
    broken[2, 1] += 1
    assert frame_step(broken) is None

    x = torch.arange(2 * 20 * 2, dtype=torch.float32).reshape(2, 20, 2)
    fast = KERNELS["GATHER"]([x, idx], {"Axis": 1})[0]
    slow = KERNELS["GATHER"]([x, broken], {"Axis": 1})[0]
    expected = x[:, torch.from_numpy(idx).long()]
    assert fast.shape == expected.shape == (2, 5, 4, 2)
    assert torch.equal(fast, expected)
    assert fast.data_ptr() == x.data_ptr()  # a view, no copy
    assert torch.equal(slow, x[:, torch.from_numpy(broken).long()])


@pytest.mark.parametrize("raw", [b"", b"<html>404</html>", b"\x1c\x00\x00\x00TFL3" + b"\x00" * 8])
def test_bytes_that_are_not_a_model_are_refused(raw):
    pytest.importorskip("tflite")
    with pytest.raises(TFLiteError):
        read_tflite(raw)
