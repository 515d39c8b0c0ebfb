"""Audio I/O: probe a file's health cheaply, read spans block-wise, mix to mono, resample.

Reading is always by span (``soundfile`` seek + read), so memory depends on the span asked
for, never on the file's length. Resampling uses torchaudio so the same code runs on a GPU.
"""

from __future__ import annotations

import errno
import math
import os
import struct
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

AUDIO_SUFFIXES = {".wav", ".flac"}
# Recorders sample between 8 kHz and 384 kHz (bat detectors up to 768 kHz); a header outside
# this range is corrupt, and honouring it would turn a small file into hours of "audio".
MIN_RATE, MAX_RATE = 1000, 1_000_000
MAX_CHANNELS = 64
# errnos that say "try again" rather than "this file is bad": network and USB file systems.
TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.EBUSY, errno.ESTALE,
                    errno.ENOLINK, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTDOWN, errno.EHOSTUNREACH,
                    errno.ENETDOWN, errno.ENETUNREACH, errno.ENOMEM, errno.ENOBUFS}


class AudioError(Exception):
    """A recording that cannot be used; ``status`` is the manifest status it maps to."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int  # frames that can actually be read
    format: str
    subtype: str
    comment: str
    artist: str
    status: str = "ok"  # ok | truncated
    reason: str | None = None


def _wav_declared_data(path: Path, size: int) -> tuple[int, int] | None:
    """(declared data bytes, data offset) from a RIFF header, or None if not plain RIFF."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                return csize, pos + 8
            pos += 8 + csize + (csize & 1)
    return None


def probe(path: str | Path) -> AudioInfo:
    """Open a recording just enough to know whether and how it can be read.

    Raises AudioError with a one-line reason for files that cannot be used at all.
    A WAV whose header promises more data than the file holds is returned with status
    ``truncated`` (its readable part is still usable: a recorder whose battery died).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise AudioError("empty", "file is empty (0 bytes)")
        with open(path, "rb"):
            pass
    except PermissionError:
        raise AudioError("unreadable", "permission denied") from None
    except FileNotFoundError:
        raise AudioError("unreadable", "file vanished during the scan") from None
    except OSError as exc:
        raise AudioError("unreadable", f"cannot open: {os.strerror(exc.errno or errno.EIO)}") from None
    try:
        with sf.SoundFile(path) as snd:
            info = AudioInfo(
                sample_rate=int(snd.samplerate),
                channels=int(snd.channels),
                frames=int(snd.frames),
                format=snd.format,
                subtype=snd.subtype,
                comment=(snd.comment or "").strip("\x00 "),
                artist=(snd.artist or "").strip("\x00 "),
            )
            if info.frames > 0 and info.format == "FLAC" and not _decodes_at(path, max(0, info.frames - 4096)):
                # A cut-off FLAC still reports its full length; decoding its tail tells. The
                # readable part is found by bisection, so that it can still be analysed.
                readable = _flac_readable_frames(path, info.frames)
                if readable == 0:
                    raise AudioError("unreadable", "FLAC audio data cannot be decoded (corrupt or cut off near "
                                     "the start)")
                info = replace(
                    info, frames=readable, status="truncated",
                    reason=f"FLAC data ends before the {info.frames / info.sample_rate:.1f} s its header "
                    f"declares; {readable / info.sample_rate:.1f} s are readable",
                )
    except sf.LibsndfileError as exc:
        text = str(exc).split(":", 1)[-1].strip() if "Error opening" in str(exc) else str(exc)
        if "Format not recognised" in text or "unknown format" in text.lower():
            raise AudioError("not_audio", "not a readable audio file (format not recognised)") from None
        raise AudioError("unreadable", f"libsndfile: {text.strip()}") from None
    except (RuntimeError, ValueError) as exc:
        raise AudioError("unreadable", f"cannot decode: {exc}") from None
    if info.frames == 0:
        raise AudioError("empty", "header is valid but holds no audio frames")
    if not MIN_RATE <= info.sample_rate <= MAX_RATE:
        raise AudioError("unreadable", f"header states an implausible sample rate of {info.sample_rate} Hz "
                         f"(expected {MIN_RATE}-{MAX_RATE} Hz)")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError("unreadable", f"header states an implausible {info.channels} channels")
    if info.format == "WAV":
        declared = _wav_declared_data(path, size)
        if declared is not None:
            data_bytes, offset = declared
            available = size - offset
            frame_bytes = max(1, info.channels * _sample_bytes(info.subtype))
            if data_bytes not in (0, 0xFFFFFFFF) and data_bytes > available + frame_bytes:
                declared_s = data_bytes / frame_bytes / info.sample_rate
                return replace(
                    info,
                    status="truncated",
                    reason=f"header declares {declared_s:.1f} s but the file holds "
                    f"{info.frames / info.sample_rate:.1f} s",
                )
    return info


def _decodes_at(path: Path, pos: int, n: int = 4096) -> bool:
    """Whether ``n`` frames decode at ``pos``; a fresh handle each time, because libsndfile's
    FLAC decoder stays broken after one failed seek."""
    try:
        with sf.SoundFile(path) as snd:
            snd.seek(pos)
            return len(snd.read(min(n, snd.frames - pos), dtype="float32")) > 0
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return False


def _flac_readable_frames(path: Path, declared: int, block: int = 4096) -> int:
    """Frames of a cut-off FLAC that decode: bisection on "can a block be decoded here"."""
    lo, hi = 0, max(0, declared - block)  # decodes at lo (checked below), not at hi
    if not _decodes_at(path, 0, block):
        return 0
    while hi - lo > block:
        mid = (lo + hi) // 2
        if _decodes_at(path, mid, block):
            lo = mid
        else:
            hi = mid
    return lo


def _sample_bytes(subtype: str) -> int:
    return {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4,
            "DOUBLE": 8, "ULAW": 1, "ALAW": 1}.get(subtype, 2)


def read_span(snd: sf.SoundFile, start: int, frames: int, channel: int | None = None) -> np.ndarray:
    """``frames`` samples from ``start`` as float32 mono; zeros past either end of the file.

    ``channel`` None mixes all channels to mono; an integer picks that channel.
    """
    out = np.zeros(frames, dtype=np.float32)
    lo, hi = max(0, start), min(snd.frames, start + frames)
    if hi <= lo:
        return out
    snd.seek(lo)
    data = snd.read(hi - lo, dtype="float32", always_2d=True)
    if channel is None:
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    else:
        if channel >= data.shape[1]:
            raise AudioError("bad_channel", f"detect.channel is {channel} (counted from 0) but the file has "
                                             f"{data.shape[1]} channel(s)")
        mono = data[:, channel]
    n = len(mono)  # may be short if the file ends early
    out[lo - start: lo - start + n] = mono
    if not np.isfinite(out).all():  # a float file with corrupt samples: silence them, never NaN scores
        np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def is_transient(exc: BaseException, path: str | os.PathLike | None = None) -> bool:
    """Whether a read error is worth retrying (I/O hiccup) rather than a property of the file."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, OSError):
        return exc.errno is None or exc.errno in TRANSIENT_ERRNOS
    if isinstance(exc, sf.LibsndfileError):
        # libsndfile reports every failed read() as "System error" (code 2), bad data otherwise.
        return exc.code == 2 and (path is None or os.access(path, os.R_OK))
    return False


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new, dtype=torch.float32)


MAX_KERNEL = 20_000_000  # float32 elements: 80 MB


def check_resample(orig: int, new: int) -> None:
    """Refuse rate pairs whose exact polyphase kernel would not fit in memory.

    torchaudio's kernel has (new/g) x (orig/g) elements (g = gcd): tiny for recorder rates
    (44100 -> 16000: 160 x 441), but tens of GB for a corrupt header's 44101 Hz.
    """
    g = math.gcd(orig, new)
    if (new // g) * (orig // g + 64) > MAX_KERNEL:
        raise AudioError("unreadable", f"sample rate {orig} Hz cannot be resampled exactly to {new} Hz "
                         "(not a recorder rate; corrupt header?)")


def resample(x: torch.Tensor, orig: int, new: int) -> torch.Tensor:
    """Resample the last axis of ``x``; the kernel is built once per rate pair."""
    if orig == new:
        return x
    check_resample(orig, new)
    res = _resampler(orig, new).to(x.device)
    return res(x)


def is_audio_name(name: str) -> bool:
    """True for recordings pam reads (any letter case); hidden and system files excluded."""
    if name.startswith(".") or name.startswith("~") or name.startswith("._"):
        return False
    return Path(name).suffix.lower() in AUDIO_SUFFIXES
