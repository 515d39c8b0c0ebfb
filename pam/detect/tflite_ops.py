"""The TFLite operators that :mod:`pam.detect.tflite_graph` executes, written in PyTorch.

Each kernel takes the op's input values (``None`` for an absent optional input) and its
builtin options, and returns the list of its outputs. Values are of two kinds:

* device tensors (``torch.Tensor``): the audio and everything computed from it, kept in
  TFLite's NHWC layout so that every axis argument in the graph means what it says;
* host arrays (``numpy.ndarray``): integer constants and the shape arithmetic the converter
  leaves in a graph with a free batch size (SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE ...).
  They depend only on input shapes, never on audio, so they never force a device sync.

A kernel whose inputs are all host arrays computes with numpy; otherwise host inputs are
moved to the device tensors' device. Convolutions get their filters already laid out for
torch (see ``WEIGHT_LAYOUTS``), so the per-call work is one view of the activations.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

Value = torch.Tensor | np.ndarray | None
Kernel = Callable[[list, dict], list]

# TFLite's Padding enum and ActivationFunctionType enum (schema.fbs).
SAME, VALID = 0, 1


def activation(x: torch.Tensor, code: int) -> torch.Tensor:
    if code == 0:
        return x
    if code == 1:
        return torch.relu(x)
    if code == 2:
        return x.clamp(-1.0, 1.0)
    if code == 3:
        return x.clamp(0.0, 6.0)
    if code == 4:
        return torch.tanh(x)
    raise NotImplementedError(f"fused activation function {code}")


def on_host(*values: Value) -> bool:
    return all(v is None or isinstance(v, np.ndarray) for v in values)


def to_device(value: Value, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return torch.as_tensor(np.asarray(value), device=like.device)


def ints(value: Value) -> list[int]:
    """A host (or, rarely, device) integer tensor as a list of Python ints."""
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.reshape(-1).tolist()]
    return [int(v) for v in np.asarray(value).reshape(-1)]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: the output has ceil(size / stride) positions, and an odd
    total pad puts the extra element after (bottom / right)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(x_nchw: torch.Tensor, kh: int, kw: int, o: dict) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for a 2-D window op on an NCHW view."""
    if o.get("Padding", VALID) != SAME:
        return 0, 0, 0, 0
    top, bottom = same_padding(x_nchw.shape[2], kh, o["StrideH"], o.get("DilationHFactor", 1))
    left, right = same_padding(x_nchw.shape[3], kw, o["StrideW"], o.get("DilationWFactor", 1))
    return top, bottom, left, right


def _conv(args: list, o: dict, depthwise: bool) -> list:
    x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
    if x.dtype != w.dtype:  # the spectrogram front end may run in float64; the network does not
        x = x.to(w.dtype)
    xc = x.permute(0, 3, 1, 2)  # NHWC storage seen as NCHW: a channels-last view, no copy
    kh, kw = w.shape[2], w.shape[3]
    top, bottom, left, right = o["_pad"] if "_pad" in o else _spatial_pads(xc, kh, kw, o)
    if top == bottom and left == right:
        padding = (top, left)
    else:
        xc, padding = F.pad(xc, (left, right, top, bottom)), (0, 0)
    y = F.conv2d(xc, w, b, stride=(o["StrideH"], o["StrideW"]), padding=padding,
                 dilation=(o.get("DilationHFactor", 1), o.get("DilationWFactor", 1)),
                 groups=xc.shape[1] if depthwise else 1)
    return [activation(y, o.get("FusedActivationFunction", 0)).permute(0, 2, 3, 1)]


def _pool(args: list, o: dict, kind: str) -> list:
    xc = args[0].permute(0, 3, 1, 2)
    kh, kw = o["FilterHeight"], o["FilterWidth"]
    top, bottom, left, right = _spatial_pads(xc, kh, kw, o)
    stride = (o["StrideH"], o["StrideW"])
    pads = (left, right, top, bottom)
    if kind == "max":
        y = F.max_pool2d(F.pad(xc, pads, value=float("-inf")) if any(pads) else xc, (kh, kw), stride)
    elif not any(pads):
        y = F.avg_pool2d(xc, (kh, kw), stride)
    else:  # TFLite averages over the real elements only, never the padding
        ones = torch.ones((1, 1, *xc.shape[2:]), dtype=xc.dtype, device=xc.device)
        y = F.avg_pool2d(F.pad(xc, pads), (kh, kw), stride) / F.avg_pool2d(F.pad(ones, pads), (kh, kw), stride)
    return [activation(y, o.get("FusedActivationFunction", 0)).permute(0, 2, 3, 1)]


def used_columns(w: np.ndarray) -> tuple[int, int] | None:
    """(first, last + 1) of the columns of a [out, in] weight that are not all zero, when
    they are under 3/4 of them: a mel filter bank reads only the bins of its band."""
    nonzero = np.flatnonzero(np.any(w != 0, axis=0))
    if len(nonzero) == 0 or nonzero[-1] + 1 - nonzero[0] >= 0.75 * w.shape[1]:
        return None
    return int(nonzero[0]), int(nonzero[-1]) + 1


def _fully_connected(args: list, o: dict) -> list:
    x, w, b = args[0], args[1], args[2] if len(args) > 2 else None
    if x.dtype == torch.float64:  # a front-end projection (mel filter bank) keeps float64
        w, b = w.double(), None if b is None else b.double()
    if not o.get("KeepNumDims", False):
        x = x.reshape(-1, o.get("_in", w.shape[1]))
    if "_cols" in o:  # the weight was cut to its non-zero columns (used_columns)
        x = x[..., o["_cols"][0]:o["_cols"][1]]
    return [activation(F.linear(x, w, b), o.get("FusedActivationFunction", 0))]


def _binary(np_fn, torch_fn) -> Kernel:
    def kernel(args: list, o: dict) -> list:
        a, b = args[0], args[1]
        if on_host(a, b):
            out = np.asarray(np_fn(a, b))
        else:
            like = a if isinstance(a, torch.Tensor) else b
            out = torch_fn(to_device(a, like), to_device(b, like))
        code = o.get("FusedActivationFunction", 0)
        return [activation(out, code) if code else out]
    return kernel


def _unary(torch_fn) -> Kernel:
    return lambda args, o: [torch_fn(args[0])]


def _reduce(np_fn, torch_fn) -> Kernel:
    def kernel(args: list, o: dict) -> list:
        x, axes, keep = args[0], tuple(ints(args[1])), bool(o.get("KeepDims", False))
        if on_host(x):
            return [np.asarray(np_fn(x, axis=axes, keepdims=keep))]
        axes = tuple(sorted(a % x.dim() for a in axes))
        return [torch_fn(x, axes, keep)]
    return kernel


def _torch_prod(x: torch.Tensor, axes: tuple, keep: bool) -> torch.Tensor:
    for a in sorted(axes, reverse=True):
        x = x.prod(dim=a, keepdim=keep)
    return x


def _reshape(args: list, o: dict) -> list:
    x = args[0]
    shape = ints(args[1]) if len(args) > 1 and args[1] is not None else [int(v) for v in o.get("NewShape", [])]
    return [x.reshape(shape)]


def _strided_slice(args: list, o: dict) -> list:
    x, begin, end, strides = args[0], ints(args[1]), ints(args[2]), ints(args[3])
    index = []
    for i, (b, e, s) in enumerate(zip(begin, end, strides)):
        bit = 1 << i
        if o.get("EllipsisMask", 0) & bit:
            index.append(Ellipsis)
        elif o.get("NewAxisMask", 0) & bit:
            index.append(None)
        elif o.get("ShrinkAxisMask", 0) & bit:
            index.append(b)
        else:
            if o.get("Offset", False):
                e = b + e
            if s < 0 and isinstance(x, torch.Tensor):
                raise NotImplementedError("STRIDED_SLICE with a negative stride on a device tensor")
            index.append(slice(None if o.get("BeginMask", 0) & bit else b,
                               None if o.get("EndMask", 0) & bit else e, s))
    out = x[tuple(index)]
    return [np.asarray(out) if on_host(x) else out]


def frame_step(idx: np.ndarray) -> int | None:
    """The hop when ``idx`` [frames, length] is tf.signal.frame's index table (row f is
    f * hop + 0 .. length - 1), else None."""
    if idx.ndim != 2 or idx.shape[0] < 2 or idx.shape[1] < 1:
        return None
    hop = int(idx[1, 0] - idx[0, 0])
    expected = idx[0, 0] + hop * np.arange(idx.shape[0])[:, None] + np.arange(idx.shape[1])[None, :]
    return hop if hop > 0 and np.array_equal(idx, expected) else None


def _gather(args: list, o: dict) -> list:
    x, idx = args[0], args[1]
    if o.get("BatchDims", 0):
        raise NotImplementedError("GATHER with batch_dims")
    if on_host(x, idx):
        return [np.take(x, idx, axis=o.get("Axis", 0))]
    axis = o.get("Axis", 0) % x.dim()
    if isinstance(idx, np.ndarray):
        # The framing of an STFT gathers overlapping runs: a strided view, not a copy. The
        # index table is the same object on every call with the same input shape.
        seen = o.setdefault("_frames", {})
        if id(idx) not in seen:
            seen.clear()
            seen[id(idx)] = (idx, frame_step(idx))
        hop = seen[id(idx)][1]
        if hop is not None and idx[-1, -1] < x.shape[axis]:
            start, length = int(idx[0, 0]), idx.shape[1]
            view = x.narrow(axis, start, x.shape[axis] - start).unfold(axis, length, hop)
            return [view.narrow(axis, 0, idx.shape[0]).movedim(-1, axis + 1)]
    idx_t = to_device(idx, x).long()
    out = x.index_select(axis, idx_t.reshape(-1))
    return [out.reshape(*x.shape[:axis], *idx_t.shape, *x.shape[axis + 1:])]


def _concatenation(args: list, o: dict) -> list:
    if on_host(*args):
        return [np.concatenate(args, axis=o["Axis"])]
    like = next(a for a in args if isinstance(a, torch.Tensor))
    out = torch.cat([to_device(a, like) for a in args], dim=o["Axis"])
    return [activation(out, o.get("FusedActivationFunction", 0))]


def _pack(args: list, o: dict) -> list:
    if on_host(*args):
        return [np.stack([np.asarray(a) for a in args], axis=o.get("Axis", 0))]
    like = next(a for a in args if isinstance(a, torch.Tensor))
    return [torch.stack([to_device(a, like) for a in args], dim=o.get("Axis", 0))]


def _split_v(args: list, o: dict) -> list:
    x, sizes, axis = args[0], ints(args[1]), ints(args[2])[0]
    if -1 in sizes:
        sizes[sizes.index(-1)] = x.shape[axis] - (sum(sizes) + 1)
    if on_host(x):
        return list(np.split(x, np.cumsum(sizes)[:-1], axis=axis))
    return list(torch.split(x, sizes, dim=axis))


def _expand_dims(args: list, o: dict) -> list:
    x, axis = args[0], ints(args[1])[0]
    if on_host(x):
        return [np.expand_dims(x, axis)]
    return [x.unsqueeze(axis if axis >= 0 else axis + x.dim() + 1)]


def _squeeze(args: list, o: dict) -> list:
    x = args[0]
    dims = [int(d) % x.ndim for d in o.get("SqueezeDims", [])] or [d for d, n in enumerate(x.shape) if n == 1]
    for d in sorted(dims, reverse=True):
        x = np.squeeze(x, d) if on_host(x) else x.squeeze(d)
    return [x]


def _transpose(args: list, o: dict) -> list:
    x, perm = args[0], ints(args[1])
    return [np.transpose(x, perm) if on_host(x) else x.permute(perm)]


def _pad(args: list, o: dict) -> list:
    x, pads = args[0], np.asarray(ints(args[1])).reshape(-1, 2)
    value = 0.0 if len(args) < 3 or args[2] is None else float(args[2].reshape(-1)[0])
    return [F.pad(x, [int(p) for pair in pads[::-1] for p in pair], value=value)]


def _rfft2d(args: list, o: dict) -> list:
    """Real 2-D FFT over the last two axes, in float64: TFLite's kernel computes it in double
    (fft2d's rdft2d) and only then stores complex64, so float32 here would lose digits that
    the spectrogram's pow() magnifies."""
    x, (fh, fw) = args[0], ints(args[1])
    if fh == 1 and x.shape[-2] == 1 and x.device.type == "cpu":
        # numpy's pocketfft: in float64, 10 against 17-30 ms per BirdNET window for torch's
        # CPU FFT on the development VM (AMD EPYC), single-threaded like TFLite's.
        return [torch.from_numpy(np.fft.rfft(x.detach().numpy().astype(np.float64), n=fw, axis=-1))]
    return [torch.fft.rfft2(x.double(), s=(fh, fw))]


FFT_BLOCK_ROWS = 128
_fft_pools: dict[int, ThreadPoolExecutor] = {}


def _rfft2d_real(args: list, o: dict) -> list:
    """RFFT2D, SQUEEZE and CAST to float32 in one step (the graph builder fuses them): the
    real part of the spectrum, which is all the cast keeps, still computed in float64. On the
    CPU it runs over blocks of rows on torch's thread count, so that the float64 and complex
    temporaries stay in cache instead of costing 24 fresh bytes per bin."""
    x, (fh, fw) = args[0], ints(args[1])
    if x.device.type != "cpu" or fh != 1 or x.shape[-2] != 1:
        spectrum = _rfft2d(args, o)[0].real.float()
    else:
        rows = np.ascontiguousarray(x.detach().reshape(-1, x.shape[-1]).numpy())
        out = np.empty((rows.shape[0], fw // 2 + 1), np.float32)

        def block(lo: int) -> None:
            out[lo:lo + FFT_BLOCK_ROWS] = np.fft.rfft(rows[lo:lo + FFT_BLOCK_ROWS].astype(np.float64), n=fw).real

        starts = range(0, rows.shape[0], FFT_BLOCK_ROWS)
        threads = torch.get_num_threads()
        if threads > 1 and len(starts) > 1:  # numpy's FFT releases the GIL
            pool = _fft_pools.get(threads) or _fft_pools.setdefault(threads, ThreadPoolExecutor(threads, "pam-fft"))
            list(pool.map(block, starts))
        else:
            for lo in starts:
                block(lo)
        spectrum = torch.from_numpy(out).reshape(*x.shape[:-1], fw // 2 + 1)
    return _squeeze([spectrum], o)


def _cast(args: list, o: dict) -> list:
    x, target = args[0], o["_out_dtype"]
    if on_host(x):
        return [np.asarray(x.real if np.iscomplexobj(x) else x).astype(target)]
    if x.is_complex():
        x = x.real
    if o.get("_keep_float64") and x.dtype == torch.float64 and target == np.float32:
        return [x]
    return [x.to(getattr(torch, np.dtype(target).name))]


def _shape(args: list, o: dict) -> list:
    return [np.asarray(tuple(args[0].shape), dtype=o["_out_dtype"])]


def _range(args: list, o: dict) -> list:
    start, limit, delta = (np.asarray(a).reshape(()) for a in args)
    return [np.arange(start, limit, delta, dtype=np.result_type(start, limit, delta))]


def _reverse(args: list, o: dict) -> list:
    x, axes = args[0], ints(args[1])
    return [np.flip(x, axes) if on_host(x) else torch.flip(x, axes)]


def _dequantize(args: list, o: dict) -> list:
    x = args[0]
    if on_host(x) or not x.is_floating_point():
        raise NotImplementedError("DEQUANTIZE of integer-quantized tensors")
    return [x.float()]


def _select(args: list, o: dict) -> list:
    cond, a, b = args
    like = next(v for v in args if isinstance(v, torch.Tensor))
    return [torch.where(to_device(cond, like).bool(), to_device(a, like), to_device(b, like))]


def _softmax(args: list, o: dict) -> list:
    return [torch.softmax(args[0] * o.get("Beta", 1.0), dim=-1)]


KERNELS: dict[str, Kernel] = {
    "CONV_2D": lambda a, o: _conv(a, o, depthwise=False),
    "DEPTHWISE_CONV_2D": lambda a, o: _conv(a, o, depthwise=True),
    "AVERAGE_POOL_2D": lambda a, o: _pool(a, o, "avg"),
    "MAX_POOL_2D": lambda a, o: _pool(a, o, "max"),
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _binary(np.add, torch.add),
    "SUB": _binary(np.subtract, torch.sub),
    "MUL": _binary(np.multiply, torch.mul),
    "DIV": _binary(np.divide, torch.div),
    "FLOOR_DIV": _binary(np.floor_divide, torch.floor_divide),
    "MAXIMUM": _binary(np.maximum, torch.maximum),
    "MINIMUM": _binary(np.minimum, torch.minimum),
    "POW": _binary(np.power, torch.pow),
    "SQUARED_DIFFERENCE": _binary(lambda a, b: (a - b) ** 2, lambda a, b: (a - b) ** 2),
    "GREATER": _binary(np.greater, torch.gt),
    "GREATER_EQUAL": _binary(np.greater_equal, torch.ge),
    "LESS": _binary(np.less, torch.lt),
    "LESS_EQUAL": _binary(np.less_equal, torch.le),
    "EQUAL": _binary(np.equal, torch.eq),
    "LOGISTIC": _unary(torch.sigmoid),
    "SILU": _unary(F.silu),  # not a TFLite op: LOGISTIC + MUL fused by the graph builder
    "RELU": _unary(torch.relu),
    "TANH": _unary(torch.tanh),
    "SIN": _unary(torch.sin),
    "COS": _unary(torch.cos),
    "EXP": _unary(torch.exp),
    "LOG": _unary(torch.log),
    "SQRT": _unary(torch.sqrt),
    "RSQRT": _unary(torch.rsqrt),
    "ABS": _unary(torch.abs),
    "NEG": _unary(torch.neg),
    "SQUARE": _unary(torch.square),
    "SOFTMAX": _softmax,
    "MEAN": _reduce(np.mean, lambda x, a, k: x.mean(dim=a, keepdim=k)),
    "SUM": _reduce(np.sum, lambda x, a, k: x.sum(dim=a, keepdim=k)),
    "REDUCE_MAX": _reduce(np.max, lambda x, a, k: x.amax(dim=a, keepdim=k)),
    "REDUCE_MIN": _reduce(np.min, lambda x, a, k: x.amin(dim=a, keepdim=k)),
    "REDUCE_PROD": _reduce(np.prod, _torch_prod),
    "RESHAPE": _reshape,
    "STRIDED_SLICE": _strided_slice,
    "GATHER": _gather,
    "CONCATENATION": _concatenation,
    "PACK": _pack,
    "SPLIT_V": _split_v,
    "EXPAND_DIMS": _expand_dims,
    "SQUEEZE": _squeeze,
    "TRANSPOSE": _transpose,
    "PAD": _pad,
    "PADV2": _pad,
    "RFFT2D": _rfft2d,
    "RFFT2D_REAL": _rfft2d_real,  # not a TFLite op: RFFT2D + SQUEEZE + CAST fused by the graph builder
    "CAST": _cast,
    "SHAPE": _shape,
    "RANGE": _range,
    "REVERSE_V2": _reverse,
    "DEQUANTIZE": _dequantize,
    "SELECT_V2": _select,
    "SELECT": _select,
}

# Constant weights re-laid-out once, at load time: {op: {input position: numpy -> numpy}}.
# TFLite conv filters are [out, kh, kw, in] and depthwise filters [1, kh, kw, channels];
# torch wants [out, in, kh, kw] and [channels, 1, kh, kw].
WEIGHT_LAYOUTS: dict[str, dict[int, Callable[[np.ndarray], np.ndarray]]] = {
    "CONV_2D": {1: lambda w: w.transpose(0, 3, 1, 2)},
    "DEPTHWISE_CONV_2D": {1: lambda w: w.transpose(3, 0, 1, 2)},
    "FULLY_CONNECTED": {1: lambda w: w},
}
