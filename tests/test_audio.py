import os

import numpy as np
import pytest
import soundfile as sf
import torch

from pam.io.audio import AudioError, is_audio_name, probe, read_span, resample
from pam.detect.dataset import read_windows
from pam.detect.windows import window_grid
from synth import noise, tone, write_wav


def test_probe_ok(tmp_path):
    p = write_wav(tmp_path / "a.wav", noise(2.0, 16000), 16000)
    info = probe(p)
    assert (info.status, info.sample_rate, info.frames, info.channels) == ("ok", 16000, 32000, 1)


def test_probe_zero_bytes(tmp_path):
    p = tmp_path / "z.wav"
    p.touch()
    with pytest.raises(AudioError) as e:
        probe(p)
    assert e.value.status == "empty" and "0 bytes" in e.value.reason


def test_probe_not_audio(tmp_path):
    p = tmp_path / "n.wav"
    p.write_text("these are field notes, not audio " * 20)
    with pytest.raises(AudioError) as e:
        probe(p)
    assert e.value.status == "not_audio"


def test_probe_truncated_wav_reports_both_lengths(tmp_path):
    p = write_wav(tmp_path / "t.wav", noise(10.0, 8000), 8000)
    data = p.read_bytes()
    p.write_bytes(data[: 44 + 8000 * 2 * 4])  # header + 4 s of 16-bit samples
    info = probe(p)
    assert info.status == "truncated"
    assert info.frames == 4 * 8000
    assert "10.0 s" in info.reason and "4.0 s" in info.reason


def test_probe_truncated_flac(tmp_path):
    p = tmp_path / "t.flac"
    sf.write(p, noise(10.0, 8000), 8000, format="FLAC")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    info = probe(p)  # the readable part is found and used, as for a truncated WAV
    assert info.status == "truncated" and "readable" in info.reason
    assert 2 * 8000 < info.frames < 6 * 8000
    with sf.SoundFile(p) as snd:
        snd.seek(info.frames - 100)
        assert len(snd.read(100)) == 100


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_probe_permission_denied(tmp_path):
    p = write_wav(tmp_path / "a.wav", noise(1.0, 8000), 8000)
    p.chmod(0)
    try:
        with pytest.raises(AudioError) as e:
            probe(p)
        assert e.value.status == "unreadable" and "permission" in e.value.reason
    finally:
        p.chmod(0o644)


@pytest.mark.parametrize("name, ok", [
    ("a.wav", True), ("A.WAV", True), ("b.Flac", True), ("._a.wav", False), (".hidden.wav", False),
    ("notes.txt", False), ("x.mp3", False),
])
def test_audio_names(name, ok):
    assert is_audio_name(name) is ok


def test_read_span_pads_and_mixes(tmp_path):
    stereo = np.stack([np.full(100, 0.5, np.float32), np.full(100, -0.25, np.float32)], axis=1)
    p = tmp_path / "s.wav"
    sf.write(p, stereo, 1000, subtype="FLOAT")
    with sf.SoundFile(p) as f:
        mixed = read_span(f, -10, 30)
        assert np.allclose(mixed[:10], 0) and np.allclose(mixed[10:], 0.125)
        right = read_span(f, 90, 20, channel=1)
        assert np.allclose(right[:10], -0.25) and np.allclose(right[10:], 0)
        with pytest.raises(AudioError):
            read_span(f, 0, 10, channel=2)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


@pytest.mark.parametrize("rate", [48000, 22050])
def test_resampled_windows_keep_frequency_length_and_timing(tmp_path, rate):
    """Windows read from 48 and 22.05 kHz files come out at 16 kHz, exact length, and an
    impulse lands where its time says."""
    audio = tone(12.0, rate, 1000.0, level=0.2)
    click_at = 7.25
    audio[int(round(click_at * rate))] = 1.0
    p = write_wav(tmp_path / "x.wav", audio, rate, subtype="FLOAT")
    grid = window_grid(len(audio), rate, 3.0, 1.5)
    with sf.SoundFile(p) as f:
        chunks = list(read_windows(f, grid, 16000, 3.0, max_span_s=5.0))  # force several spans
    starts = np.concatenate([s for s, _ in chunks])
    windows = torch.cat([w for _, w in chunks])
    assert starts.tolist() == grid.starts.tolist()
    assert windows.shape == (len(grid), 48000)
    assert abs(dominant_hz(windows[0].numpy(), 16000) - 1000.0) < 2
    k = int(np.searchsorted(grid.starts / rate, click_at) - 1)  # a window holding the click
    expected = (click_at - grid.starts[k] / rate) * 16000
    residual = windows[k].numpy() - resample(torch.from_numpy(tone(12.0, rate, 1000.0, 0.2)), rate, 16000).numpy()[
        round(grid.starts[k] / rate * 16000): round(grid.starts[k] / rate * 16000) + 48000]
    assert abs(int(np.argmax(np.abs(residual))) - expected) <= 1


def test_spans_agree_with_whole_file_resampling(tmp_path):
    rate = 22050
    audio = noise(20.0, rate, level=0.1, seed=3)
    p = write_wav(tmp_path / "n.wav", audio, rate, subtype="FLOAT")
    grid = window_grid(len(audio), rate, 3.0, 1.5)
    whole = resample(torch.from_numpy(audio), rate, 16000)
    with sf.SoundFile(p) as f:
        got = torch.cat([w for _, w in read_windows(f, grid, 16000, 3.0, max_span_s=4.0)])
    for k in range(len(grid) - 2):  # last windows are padded
        o = round(grid.starts[k] * 16000 / rate)
        ref = whole[o : o + 48000]
        assert torch.allclose(got[k][100:-100], ref[100:-100], atol=1e-3), k


def test_probe_permission_denied_even_as_root(tmp_path, monkeypatch):
    """Root ignores file modes, so simulate what an unprivileged nightly user meets."""
    p = write_wav(tmp_path / "a.wav", noise(1.0, 8000), 8000)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(p))

    monkeypatch.setattr("pam.io.audio.open", denied, raising=False)
    with pytest.raises(AudioError) as e:
        probe(p)
    assert e.value.status == "unreadable" and e.value.reason == "permission denied"


@pytest.mark.parametrize("offsets", [[0, 24000, 48000, 72000], [5, 24005, 48006, 72006], [7], [0, 50000, 100000]])
def test_window_cutting_matches_plain_indexing(offsets):
    """Even spacing takes the strided-view path, uneven spacing (rounding) and single windows
    the copying one, gaps (hop > window) included; all equal indexing sample by sample."""
    from pam.detect.dataset import _cut

    wave = torch.arange(200_000, dtype=torch.float32)
    offs = np.array(offsets)
    want = wave[torch.from_numpy(offs)[:, None] + torch.arange(48000)[None, :]]
    assert torch.equal(_cut(wave, offs, 48000), want)
