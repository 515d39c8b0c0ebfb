"""Run a TensorFlow Lite model as a PyTorch module, read straight from its ``.tflite`` file.

No TensorFlow or LiteRT is involved, not even once at conversion: the flatbuffer is parsed
with the pure-Python ``tflite`` package (``pip install tflite``), its constant tensors become
the module's buffers and its operators run one after another as the PyTorch kernels in
:mod:`pam.detect.tflite_ops`. The batch size is free even where the file says 1, because
the graph's own shape arithmetic (SHAPE, STRIDED_SLICE, PACK ...) runs on every call.

    spec = read_tflite(Path("model.tflite").read_bytes())
    net = TFLiteGraph(spec, outputs=[spec.outputs[0], spec.last_op("FULLY_CONNECTED").inputs[0]])
    logits, embeddings = net(audio)          # audio: float32 [batch, samples]

Numerics follow TFLite's kernels: float32 everywhere except RFFT2D, which TFLite computes in
double before storing complex64, and so does this module. That matters: a float32 FFT moves
BirdNET's logits by up to 1.5e-3 (its spectrogram raises mel power to a small exponent, which
magnifies rounding in quiet bins); in float64 they stay within about 5e-5 of LiteRT's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pam.detect.tflite_ops import KERNELS, VALID, WEIGHT_LAYOUTS, used_columns

# schema.fbs TensorType -> numpy dtype (COMPLEX64 only ever flows between ops).
_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_,
           7: np.int16, 8: np.complex64, 9: np.int8, 10: np.float64, 11: np.complex128}


class TFLiteError(ValueError):
    """The file is not a TFLite model this reader can run."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # as stored; dimensions computed at run time may differ
    dtype: type
    data: np.ndarray | None  # the constant's value, None for a computed tensor


@dataclass(frozen=True)
class OpSpec:
    kind: str  # the builtin operator's name, e.g. "CONV_2D"
    inputs: tuple[int, ...]  # tensor indices, -1 for an absent optional input
    outputs: tuple[int, ...]
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class GraphSpec:
    tensors: list[TensorSpec]
    ops: list[OpSpec]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def last_op(self, kind: str) -> OpSpec:
        found = [op for op in self.ops if op.kind == kind]
        if not found:
            raise TFLiteError(f"the model has no {kind} operator")
        return found[-1]

    def op_kinds(self) -> set[str]:
        return {op.kind for op in self.ops}


def _names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


def _options(op, option_names: dict[int, str]) -> dict:
    """An operator's builtin options as a plain dict, read by reflection on the generated
    ``tflite.<Name>Options`` class: every no-argument getter, and ``XAsNumpy`` vectors as X."""
    import inspect

    import tflite

    table = op.BuiltinOptions()
    if table is None or op.BuiltinOptionsType() == 0:
        return {}
    cls = getattr(tflite, option_names[op.BuiltinOptionsType()])
    obj = cls()
    obj.Init(table.Bytes, table.Pos)
    out = {}
    for name, fn in inspect.getmembers(obj, inspect.ismethod):
        if name == "Init" or name.startswith("GetRootAs") or name.endswith(("Length", "IsNone", "HasIdentifier")):
            continue
        if name.endswith("AsNumpy"):
            value = fn()
            out[name[: -len("AsNumpy")]] = np.asarray(value) if not isinstance(value, int) else np.zeros(0, np.int32)
        elif not inspect.signature(fn).parameters:
            out[name] = fn()
    return out


def _constant(model, tensor, raw: bytes, dtype) -> np.ndarray | None:
    buf = model.Buffers(tensor.Buffer())
    if buf.Offset() > 1:  # large models keep weights after the flatbuffer, by offset
        data = np.frombuffer(raw, np.uint8, count=buf.Size(), offset=buf.Offset())
    elif buf.DataLength() > 0:
        data = buf.DataAsNumpy()
    else:
        return None
    shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if data.nbytes != expected:
        raise TFLiteError(f"constant {tensor.Name().decode(errors='replace')!r} holds {data.nbytes} bytes, "
                          f"its shape {list(shape)} needs {expected}")
    return np.frombuffer(data.tobytes(), dtype=dtype).reshape(shape)


def read_tflite(raw: bytes) -> GraphSpec:
    """Parse a TFLite flatbuffer (its first subgraph). Raises TFLiteError when the bytes are
    not a TFLite model, are truncated, or hold constants of the wrong size."""
    if len(raw) < 8 or raw[4:8] != b"TFL3":
        raise TFLiteError("not a TFLite flatbuffer (no TFL3 identifier)")
    import tflite

    op_names = _names(tflite.BuiltinOperator)
    option_names = _names(tflite.BuiltinOptions)
    try:
        model = tflite.Model.GetRootAs(raw, 0)
        if model.SubgraphsLength() < 1:
            raise TFLiteError("the model has no subgraph")
        g = model.Subgraphs(0)
        tensors = []
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            dtype = _DTYPES.get(t.Type())
            if dtype is None:
                raise TFLiteError(f"tensor {i} has TFLite type {t.Type()}, which this reader does not handle")
            shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
            tensors.append(TensorSpec(t.Name().decode(errors="replace"), shape, dtype, _constant(model, t, raw, dtype)))
        ops = []
        for k in range(g.OperatorsLength()):
            op = g.Operators(k)
            code = model.OperatorCodes(op.OpcodeIndex())
            # Newer files keep the opcode in BuiltinCode, older ones in the deprecated byte.
            kind = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
            ops.append(OpSpec(kind, tuple(int(i) for i in op.InputsAsNumpy()),
                              tuple(int(i) for i in op.OutputsAsNumpy()), _options(op, option_names)))
        inputs = tuple(int(i) for i in g.InputsAsNumpy())
        outputs = tuple(int(i) for i in g.OutputsAsNumpy())
    except TFLiteError:
        raise
    except Exception as exc:  # a damaged flatbuffer fails deep inside the generated reader
        raise TFLiteError(f"damaged TFLite flatbuffer ({type(exc).__name__}: {exc})") from exc
    return GraphSpec(tensors, ops, inputs, outputs)


@dataclass
class _Step:
    kind: str
    fn: Callable[[list, dict], list]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict
    weights: dict[int, str]  # input position -> buffer name of a pre-laid-out constant
    free: tuple[int, ...] = ()  # tensors no later step reads


class TFLiteGraph(nn.Module):
    """The graph of ``spec`` as a module: forward(*inputs) -> tuple of the requested outputs.

    ``outputs``: tensor indices to return (default: the graph's outputs); only the ops they
    need are run. ``spectral_float64``: keep what follows an RFFT2D in float64 up to the next
    convolution instead of storing float32 as TFLite does (no closer to LiteRT on BirdNET,
    and slower; there for experiments). The module holds no trainable parameters and an
    empty state_dict: its constants always come from the .tflite file.
    """

    def __init__(self, spec: GraphSpec, outputs: list[int] | tuple[int, ...] | None = None,
                 spectral_float64: bool = False):
        super().__init__()
        missing = sorted(spec.op_kinds() - set(KERNELS))
        if missing:
            raise TFLiteError(f"the model uses TFLite operators pam cannot run yet: {', '.join(missing)}")
        self.graph_inputs = tuple(spec.inputs)
        self.graph_outputs = tuple(spec.outputs if outputs is None else outputs)
        consts: dict[int, object] = {}
        for i, t in enumerate(spec.tensors):
            if t.data is not None:
                consts[i] = t.data if np.dtype(t.dtype).kind in "iub" else torch.from_numpy(t.data.copy())
        steps = self._fold_constants(spec, consts, spectral_float64)
        steps = self._needed(steps, set(self.graph_outputs))
        steps = self._fuse(steps, consts, set(self.graph_outputs))
        read = {i for s in steps for pos, i in enumerate(s.inputs) if i >= 0 and pos not in s.weights}
        self._host: dict[int, np.ndarray] = {}
        self._device: list[tuple[int, str]] = []
        for i in sorted(read & set(consts)):
            if isinstance(consts[i], np.ndarray):
                self._host[i] = consts[i]
            else:
                self.register_buffer(f"t{i}", consts[i], persistent=False)
                self._device.append((i, f"t{i}"))
        for k, s in enumerate(steps):
            for pos, name in list(s.weights.items()):
                layout = WEIGHT_LAYOUTS[s.kind][pos]
                w = consts[s.inputs[pos]]
                w = w.numpy() if isinstance(w, torch.Tensor) else w
                cols = used_columns(w) if s.kind == "FULLY_CONNECTED" and pos == 1 else None
                if cols:
                    s.options = {**s.options, "_cols": cols, "_in": w.shape[1]}
                    w = w[:, cols[0]:cols[1]]
                self.register_buffer(f"s{k}_w{pos}", torch.from_numpy(np.ascontiguousarray(layout(w))),
                                     persistent=False)
                s.weights[pos] = f"s{k}_w{pos}"
        self._steps = self._with_frees(steps, set(self.graph_outputs) | set(consts))
        self._n_tensors = len(spec.tensors)
        self._by_shape: dict[tuple, dict[int, np.ndarray]] = {}

    @staticmethod
    def _fold_constants(spec: GraphSpec, consts: dict, spectral_float64: bool) -> list[_Step]:
        """Steps for every op; an op whose inputs are all constants (e.g. DEQUANTIZE of float16
        weights) is run once here and its outputs join the constants."""
        steps = []
        for op in spec.ops:
            options = dict(op.options)
            if op.kind in ("CAST", "SHAPE"):
                options["_out_dtype"] = spec.tensors[op.outputs[0]].dtype
                options["_keep_float64"] = spectral_float64
            fn = KERNELS[op.kind]
            if all(i < 0 or i in consts for i in op.inputs) and op.inputs:
                outs = fn([consts[i] if i >= 0 else None for i in op.inputs], options)
                consts.update(zip(op.outputs, outs))
                continue
            weights = {pos: "" for pos in WEIGHT_LAYOUTS.get(op.kind, {})
                       if pos < len(op.inputs) and op.inputs[pos] in consts}
            if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") and 1 not in weights:
                raise TFLiteError(f"{op.kind} with a computed (non-constant) filter is not supported")
            steps.append(_Step(op.kind, fn, op.inputs, op.outputs, options, weights))
        return steps

    @staticmethod
    def _needed(steps: list[_Step], wanted: set[int]) -> list[_Step]:
        keep, need = [], set(wanted)
        for s in reversed(steps):
            if need & set(s.outputs):
                keep.append(s)
                need |= {i for i in s.inputs if i >= 0}
        return keep[::-1]

    @staticmethod
    def _fuse(steps: list[_Step], consts: dict, kept: set[int]) -> list[_Step]:
        """Rewrites that save passes over memory and change no value: x * sigmoid(x)
        (LOGISTIC then MUL, i.e. swish) becomes one SiLU; RFFT2D, SQUEEZE and a CAST that
        keeps the real part become one blocked step (RFFT2D_REAL); and a zero PAD of the two
        spatial axes that only feeds a VALID convolution becomes its padding."""
        readers: dict[int, list[_Step]] = {}
        for st in steps:
            for i in st.inputs:
                readers.setdefault(i, []).append(st)
        drop = set()
        for st in steps:
            out = st.outputs[0]
            users = readers.get(out, [])
            if len(users) != 1 or out in kept:
                continue
            user = users[0]
            if (st.kind == "LOGISTIC" and user.kind == "MUL" and set(user.inputs) == {st.inputs[0], out}
                    and not user.options.get("FusedActivationFunction")):
                user.kind, user.fn, user.inputs, user.options = "SILU", KERNELS["SILU"], (st.inputs[0],), {}
                drop.add(id(st))
            elif st.kind == "RFFT2D" and user.kind == "SQUEEZE" and user.outputs[0] not in kept:
                casts = readers.get(user.outputs[0], [])
                if len(casts) == 1 and casts[0].kind == "CAST" and casts[0].options["_out_dtype"] == np.float32 \
                        and not casts[0].options["_keep_float64"]:
                    cast = casts[0]
                    cast.kind, cast.fn, cast.inputs = "RFFT2D_REAL", KERNELS["RFFT2D_REAL"], st.inputs
                    cast.options = {"SqueezeDims": user.options.get("SqueezeDims", [])}
                    drop |= {id(st), id(user)}
            elif st.kind in ("PAD", "PADV2") and user.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") \
                    and user.options.get("Padding") == VALID and isinstance(consts.get(st.inputs[1]), np.ndarray):
                pads = consts[st.inputs[1]].reshape(-1, 2)
                value = consts.get(st.inputs[2]) if len(st.inputs) > 2 and st.inputs[2] >= 0 else 0
                if pads.shape == (4, 2) and not pads[0].any() and not pads[3].any() and value is not None \
                        and not np.asarray(value).any():
                    user.options = {**user.options, "_pad": tuple(int(v) for v in (*pads[1], *pads[2]))}
                    user.inputs = (st.inputs[0], *user.inputs[1:])
                    drop.add(id(st))
        return [st for st in steps if id(st) not in drop]

    @staticmethod
    def _with_frees(steps: list[_Step], kept: set[int]) -> list[_Step]:
        last = {}
        for k, s in enumerate(steps):
            for i in s.inputs:
                last[i] = k
        for k, s in enumerate(steps):
            s.free = tuple(i for i in set(s.inputs) if i >= 0 and last[i] == k and i not in kept)
        return steps

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.graph_inputs):
            raise TypeError(f"the graph takes {len(self.graph_inputs)} inputs, got {len(inputs)}")
        # Host values (shape arithmetic) depend only on the input shapes: computed on the
        # first call with these shapes, then reused, which also skips their steps.
        key = tuple(tuple(x.shape) for x in inputs)
        known = self._by_shape.get(key)
        vals: list = [None] * self._n_tensors
        for i, v in (known or self._host).items():
            vals[i] = v
        buffers = self._buffers
        for i, name in self._device:
            vals[i] = buffers[name]
        for i, x in zip(self.graph_inputs, inputs):
            vals[i] = x
        for s in self._steps:
            if known is not None and s.outputs[0] in known:
                continue
            args = [vals[i] if i >= 0 else None for i in s.inputs]
            for pos, name in s.weights.items():
                args[pos] = buffers[name]
            outs = s.fn(args, s.options)
            for i, v in zip(s.outputs, outs):
                vals[i] = v
            for i in s.free:
                if not isinstance(vals[i], np.ndarray):  # host values stay, for the cache
                    vals[i] = None
        if known is None:
            if len(self._by_shape) >= 16:
                self._by_shape.clear()
            self._by_shape[key] = {i: v for i, v in enumerate(vals) if isinstance(v, np.ndarray)}
        return tuple(vals[i] for i in self.graph_outputs)
