"""Malformed recordings for fuzz tests: seeded truncations, byte flips and lying header
fields of valid WAV and FLAC files, as a bad SD card, a cut copy or a buggy recorder makes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from synth import noise, write_wav

# (file name, rate, channels, subtype); names carry AudioMoth / Song Meter times.
VALID = [
    ("AM01/20240501_020000.WAV", 8000, 1, "PCM_16"),
    ("AM01/20240501_021000.WAV", 16000, 2, "PCM_16"),
    ("AM02/20240501_022000.WAV", 22050, 1, "FLOAT"),
    ("AM02/20240501_023000.WAV", 8000, 1, "PCM_24"),
    ("SM03/SM03_20240501_020000.flac", 8000, 1, "PCM_16"),
    ("SM03/SM03_20240501_021000.flac", 16000, 2, "PCM_24"),
]


def write_valid(root: Path, seconds: float = 2.0) -> list[Path]:
    out = []
    for k, (name, rate, channels, subtype) in enumerate(VALID):
        audio = noise(seconds * channels, rate, level=0.1, seed=k)
        audio = audio.reshape(-1, channels) if channels > 1 else audio
        out.append(write_wav(root / name, audio, rate, subtype=subtype))
    return out


def _wav_fields(data: bytes) -> dict[str, int]:
    """Byte offsets of the fmt fields and the data chunk size in a plain RIFF/WAVE file."""
    offsets: dict[str, int] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if cid == b"fmt ":
            offsets.update(format_tag=pos + 8, channels=pos + 10, sample_rate=pos + 12, byte_rate=pos + 16,
                           block_align=pos + 20, bits=pos + 22, fmt_size=pos + 4)
        elif cid == b"data":
            offsets["data_size"] = pos + 4
            break
        pos += 8 + size + (size & 1)
    return offsets


FIELD_SIZES = {"format_tag": 2, "channels": 2, "sample_rate": 4, "byte_rate": 4, "block_align": 2, "bits": 2,
               "fmt_size": 4, "data_size": 4}
FIELD_VALUES = {
    "format_tag": [0, 2, 3, 6, 0x55, 0xFFFE, 0x1234],
    "channels": [0, 3, 255, 65535],
    "sample_rate": [0, 1, 999, 44101, 2**31 - 1, 2**32 - 1],
    "byte_rate": [0, 1, 2**32 - 1],
    "block_align": [0, 1, 3, 65535],
    "bits": [0, 1, 7, 12, 64, 65535],
    "fmt_size": [0, 2, 2**31, 2**32 - 1],
    "data_size": [0, 1, 2**31, 2**32 - 1],
}


def mutate(data: bytes, is_wav: bool, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random corruption of ``data``; returns it with a description."""
    kind = rng.choice(["truncate", "flip_header", "flip_data", "field" if is_wav else "flip_header",
                       "magic", "splice"])
    b = bytearray(data)
    if kind == "truncate":
        cut = int(rng.integers(1, len(b))) if rng.random() < 0.7 else int(rng.integers(1, min(len(b), 80)))
        return bytes(b[:cut]), f"truncated at {cut}"
    if kind == "flip_header":
        n = int(rng.integers(1, 6))
        for _ in range(n):
            i = int(rng.integers(0, min(len(b), 128)))
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b), f"{n} byte(s) flipped in the header"
    if kind == "flip_data":
        n = int(rng.integers(1, 50))
        for _ in range(n):
            i = int(rng.integers(min(len(b) - 1, 128), len(b)))
            b[i] ^= int(rng.integers(1, 256))
        return bytes(b), f"{n} byte(s) flipped in the data"
    if kind == "field":
        fields = _wav_fields(data)
        name = str(rng.choice(sorted(fields)))
        value = int(rng.choice(FIELD_VALUES[name]))
        size = FIELD_SIZES[name]
        b[fields[name]:fields[name] + size] = value.to_bytes(size, "little")
        return bytes(b), f"{name} = {value}"
    if kind == "magic":
        i = int(rng.integers(0, 4))
        b[i:i + 4] = rng.choice([b"RIFX", b"RF64", b"fLaC", b"OggS", b"\x00\x00\x00\x00", b"ID3\x03"])
        return bytes(b[:len(data)]), "wrong magic bytes"
    # splice: a valid header followed by random bytes, or random bytes with a valid tail
    cut = int(rng.integers(16, min(len(b), 200)))
    junk = rng.integers(0, 256, size=int(rng.integers(10, 5000)), dtype=np.uint8).tobytes()
    return (bytes(b[:cut]) + junk, "header + random bytes") if rng.random() < 0.5 else (junk + bytes(b[cut:]),
                                                                                         "random bytes + tail")


def write_malformed(root: Path, sources: list[Path], n: int, seed: int = 0) -> dict[Path, str]:
    """``n`` corrupted copies of ``sources`` under ``root``; returns path -> what was done."""
    rng = np.random.default_rng(seed)
    out: dict[Path, str] = {}
    for k in range(n):
        src = sources[k % len(sources)]
        data = src.read_bytes()
        is_wav = src.suffix.lower() == ".wav"
        bad, what = mutate(data, is_wav, rng)
        if k % 37 == 5:  # a WAV under a FLAC name and the other way round
            suffix = ".flac" if is_wav else ".WAV"
            what += ", wrong extension"
        else:
            suffix = src.suffix
        site = f"BAD{k % 4}"
        path = root / site / f"2024050{1 + k % 9}_{k // 60 % 24:02d}{k % 60:02d}00{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bad)
        out[path] = f"{src.name}: {what}"
    return out
