"""The TFLite graph runner's own rules, without any model file: SAME padding as TensorFlow
computes it, the STFT framing table seen as a strided view, and bytes that are not a model.
(tests/test_birdnet.py runs whole graphs against the LiteRT interpreter.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pam.detect.tflite_graph import TFLiteError, read_tflite
from pam.detect.tflite_ops import KERNELS, frame_step, same_padding, used_columns


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


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_real_spectrum_equals_float64_fft_rounded_once(threads):
    """RFFT2D + SQUEEZE + CAST as one blocked step: the float64 FFT's real part, rounded to
    float32 once, whatever the blocks and threads."""
    x = torch.randn(3, 300, 1, 64)  # 900 rows: several blocks
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (out,) = KERNELS["RFFT2D_REAL"]([x, np.array([1, 64], np.int32)], {"SqueezeDims": np.array([-2])})
    finally:
        torch.set_num_threads(before)
    expected = np.fft.rfft(x.numpy().astype(np.float64), n=64).real.astype(np.float32)[:, :, 0, :]
    assert out.shape == (3, 300, 33) and out.dtype == torch.float32
    assert np.array_equal(out.numpy(), expected)


def test_a_banded_weight_keeps_only_its_columns():
    w = np.zeros((4, 100), np.float32)
    w[:, 10:30] = 1.0
    assert used_columns(w) == (10, 30)
    w[0, 90] = 1.0  # the band now spans most columns: nothing to cut
    assert used_columns(w) is None
