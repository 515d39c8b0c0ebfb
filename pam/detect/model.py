"""The detector network: waveform in, per-class logits out.

The log-mel spectrogram is the network's first layer (torchaudio), so it runs on whatever
device the weights are on and the data loader only has to move raw audio. The backbone is a
small ResNet (residual blocks of two 3x3 convolutions, as in the bird-sound CNN literature:
BirdNET, the bobwhite covey-call CNN) with a multi-label sigmoid head.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torchaudio
from torch import nn


@dataclass(frozen=True)
class SpectrogramSettings:
    sample_rate: int = 16000
    n_fft: int = 512
    hop_length: int = 256  # 16 ms frames at 16 kHz
    n_mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    # band_mean removes each band's mean over the window (stationary site noise such as
    # insects or hum) before scaling; it is what lets a model travel between sites.
    # pcen: per-channel energy normalisation (Wang et al. 2017; Lostanlen et al. 2019), an
    # automatic gain control per band that follows slowly changing background sound.
    normalize: str = "band_mean"  # band_mean | global | pcen

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Architecture:
    width: int = 16  # channels of the stem; stage k has width * 2**(k+1)
    stages: int = 3
    blocks_per_stage: int = 1
    dropout: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


NORMALIZE_MODES = ("band_mean", "global", "pcen")


def pcen(mel_power: torch.Tensor, hop_s: float, time_constant_s: float = 0.4, alpha: float = 0.98,
         delta: float = 2.0, r: float = 0.5, eps: float = 1e-6) -> torch.Tensor:
    """Per-channel energy normalisation of a mel power spectrogram [..., mels, frames].

    Librosa's defaults and conventions (magnitudes of float audio scaled by 2**31, smoother
    started at the first frame's level), so that the constants mean what they do there.
    """
    e = mel_power.clamp_min(0).sqrt() * float(2**31)
    t_frames = time_constant_s / hop_s
    b = (math.sqrt(1 + 4 * t_frames**2) - 1) / (2 * t_frames**2)
    first = e[..., :1]
    # M_t = (1 - b) M_{t-1} + b E_t with M_0 = E_0: a linear filter of E - E_0 from rest, plus E_0.
    coeffs_b = torch.tensor([b, 0.0], dtype=e.dtype, device=e.device)
    coeffs_a = torch.tensor([1.0, b - 1.0], dtype=e.dtype, device=e.device)
    smooth = torchaudio.functional.lfilter(e - first, coeffs_a, coeffs_b, clamp=False) + first
    return (e / (eps + smooth).pow(alpha) + delta).pow(r) - delta**r


class LogMel(nn.Module):
    """Waveform [batch, samples] -> normalised log-mel [batch, 1, mels, frames]."""

    def __init__(self, s: SpectrogramSettings):
        super().__init__()
        if s.normalize not in NORMALIZE_MODES:
            raise ValueError(f"unknown spectrogram normalize mode {s.normalize!r} ({' | '.join(NORMALIZE_MODES)})")
        self.settings = s
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=s.sample_rate, n_fft=s.n_fft, hop_length=s.hop_length,
            n_mels=s.n_mels, f_min=s.f_min, f_max=s.f_max, power=2.0, center=True,
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=wave.device.type, enabled=False):
            if self.settings.normalize == "pcen":
                s = self.settings
                spec = pcen(self.mel(wave.float()), s.hop_length / s.sample_rate)
                spec = spec - spec.mean(dim=(-2, -1), keepdim=True)
            else:
                spec = torch.log(self.mel(wave.float()) + 1e-6)
            if self.settings.normalize == "band_mean":
                spec = spec - spec.mean(dim=-1, keepdim=True)
            elif self.settings.normalize == "global":
                spec = spec - spec.mean(dim=(-2, -1), keepdim=True)
            spec = spec / (spec.std(dim=(-2, -1), keepdim=True) + 1e-5)
        return spec.unsqueeze(1)


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class PamNet(nn.Module):
    """Log-mel front end + ResNet backbone + multi-label head."""

    def __init__(self, n_classes: int, spectrogram: SpectrogramSettings = SpectrogramSettings(),
                 arch: Architecture = Architecture()):
        super().__init__()
        self.spectrogram_settings = spectrogram
        self.arch = arch
        self.frontend = LogMel(spectrogram)
        w = arch.width
        # A strided stem and a pool bring 10 ms x 64-band input to 1/4 resolution before
        # the residual stages: most of the cost of a CNN sits at full resolution.
        self.stem = nn.Sequential(
            nn.Conv2d(1, w, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        blocks: list[nn.Module] = []
        cin = w
        for stage in range(arch.stages):
            cout = w * 2 ** (stage + 1)
            for b in range(arch.blocks_per_stage):
                blocks.append(ResidualBlock(cin, cout, stride=2 if (b == 0 and stage > 0) else 1))
                cin = cout
        self.backbone = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(arch.dropout)
        self.head = nn.Linear(2 * cin, n_classes)

    def embed_spec(self, spec: torch.Tensor) -> torch.Tensor:
        """Embedding of a normalised spectrogram [batch, 1, mels, frames] (the frontend's output)."""
        x = self.backbone(self.stem(spec))
        x = x.mean(dim=2)  # over frequency -> [batch, channels, time]
        return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=1)

    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        return self.embed_spec(self.frontend(wave))

    def classify(self, spec: torch.Tensor) -> torch.Tensor:
        """Logits from a spectrogram: training applies SpecAugment between frontend and this."""
        return self.head(self.dropout(self.embed_spec(spec)))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.classify(self.frontend(wave))


@dataclass
class ModelCard:
    """Everything besides the weights that a checkpoint must carry to be used correctly."""

    name: str
    classes: list[str]
    window_s: float
    spectrogram: SpectrogramSettings = field(default_factory=SpectrogramSettings)
    arch: Architecture = field(default_factory=Architecture)
    thresholds: dict[str, float] = field(default_factory=dict)  # per class; missing -> 0.5
    metrics: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)  # data, splits, config, fingerprint
    parent_id: str | None = None

    @property
    def sample_rate(self) -> int:
        return self.spectrogram.sample_rate

    def threshold_vector(self, overrides: dict[str, float] | None = None,
                         min_score: float | None = None) -> torch.Tensor:
        values = []
        for c in self.classes:
            t = self.thresholds.get(c, 0.5)
            if min_score is not None:
                t = min_score
            if overrides and c in overrides:
                t = overrides[c]
            values.append(float(t))
        return torch.tensor(values, dtype=torch.float32)

    def build(self) -> PamNet:
        return PamNet(len(self.classes), self.spectrogram, self.arch)
