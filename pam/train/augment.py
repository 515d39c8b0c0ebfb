"""Batch augmentations on waveforms [batch, samples], seeded by a ``torch.Generator``.

A detector trained on a few sites meets new noise, new distances and new call timing at
every other site; these augmentations imitate exactly those changes. They work on whole
batches of torch tensors so they can run on the same device as the model. Randomness comes
only from the generator passed in (which must live on the tensors' device), so a seeded
run is reproducible.
"""

from __future__ import annotations

import torch


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def _chance(n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of each row of [batch, samples]."""
    return x.float().pow(2).mean(dim=-1).sqrt()


def random_crop(x: torch.Tensor, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random ``length``-sample window of each row (a random time shift of the content).

    Rows shorter than ``length`` are placed at a random offset inside a zero window instead,
    so the content still moves around.
    """
    b, n = x.shape
    dev = x.device
    if n == length:
        return x.clone()
    if n > length:
        starts = torch.randint(0, n - length + 1, (b,), generator=generator, device=dev)
        index = starts[:, None] + torch.arange(length, device=dev)[None, :]
        return torch.gather(x, 1, index)
    out = x.new_zeros(b, length)
    offsets = torch.randint(0, length - n + 1, (b,), generator=generator, device=dev)
    index = offsets[:, None] + torch.arange(n, device=dev)[None, :]
    return out.scatter(1, index, x)


def time_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Circularly shift each row by a random amount in ``[-max_shift, max_shift]`` samples."""
    b, n = x.shape
    if max_shift <= 0:
        return x.clone()
    dev = x.device
    shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=generator, device=dev)
    index = (torch.arange(n, device=dev)[None, :] - shifts[:, None]) % n
    return torch.gather(x, 1, index)


def random_gain(x: torch.Tensor, gain_db: tuple[float, float], generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each row by a gain drawn uniformly (in dB) from ``gain_db``: distance and recorder gain."""
    g = _uniform(x.shape[0], gain_db[0], gain_db[1], generator, x.device)
    return x * (10.0 ** (g / 20.0)).to(x.dtype)[:, None]


def overlay_background(
    x: torch.Tensor,
    backgrounds: torch.Tensor,
    snr_db: tuple[float, float],
    generator: torch.Generator | None = None,
    p: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a random background segment into each row at an SNR drawn from ``snr_db``.

    ``backgrounds`` is a bank [m, length >= samples] of real background recordings (e.g.
    absence clips of the training sites). For each row a bank row and offset are drawn, the
    segment is scaled so that ``20 log10(rms(x) / rms(background)) = snr`` and added. The
    labels do not change: the background adds no class.

    Returns the mixed batch and the SNR achieved per row in dB, computed from the RMS of the
    row and of the scaled background actually added (NaN where nothing was added: row not
    picked with probability ``p``, or a silent row or background, for which no SNR exists).
    """
    b, n = x.shape
    dev = x.device
    if backgrounds.dim() != 2 or backgrounds.shape[0] == 0:
        raise ValueError("backgrounds must be a non-empty [m, samples] bank")
    if backgrounds.shape[1] < n:
        raise ValueError(f"background segments have {backgrounds.shape[1]} samples, fewer than the {n} needed")
    lo, hi = snr_db
    if lo > hi:
        raise ValueError(f"snr_db range {snr_db} is reversed")
    pick = torch.randint(0, backgrounds.shape[0], (b,), generator=generator, device=dev)
    starts = torch.randint(0, backgrounds.shape[1] - n + 1, (b,), generator=generator, device=dev)
    index = starts[:, None] + torch.arange(n, device=dev)[None, :]
    seg = torch.gather(backgrounds[pick].to(x.dtype), 1, index)
    seg = seg - seg.mean(dim=1, keepdim=True)  # a DC offset is not background sound
    snr = _uniform(b, lo, hi, generator, dev)
    use = _chance(b, p, generator, dev)
    sig_rms, bg_rms = rms(x), rms(seg)
    ok = use & (sig_rms > 0) & (bg_rms > 0)
    scale = torch.where(ok, sig_rms / (bg_rms.clamp_min(1e-12) * 10.0 ** (snr / 20.0)), torch.zeros_like(snr))
    added = seg * scale.to(x.dtype)[:, None]
    achieved = 20.0 * torch.log10(sig_rms / rms(added).clamp_min(1e-30))
    achieved = torch.where(ok, achieved, torch.full_like(achieved, float("nan")))
    return x + added, achieved


def mix_clips(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    p: float = 0.5,
    gain_db: tuple[float, float] = (-6.0, 0.0),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add another clip of the batch to a fraction ``p`` of rows; labels become the union.

    Two calls in one window happen in the field; mixing also teaches the model that a
    class is present whatever else is heard. The partner is scaled by a gain drawn from
    ``gain_db`` relative to its own level.
    """
    b = x.shape[0]
    dev = x.device
    if b < 2:
        return x.clone(), y.clone()
    # A random partner other than the row itself.
    partner = (torch.arange(b, device=dev) + torch.randint(1, b, (b,), generator=generator, device=dev)) % b
    use = _chance(b, p, generator, dev)
    g = 10.0 ** (_uniform(b, gain_db[0], gain_db[1], generator, dev) / 20.0)
    g = torch.where(use, g, torch.zeros_like(g)).to(x.dtype)
    mixed = x + g[:, None] * x[partner]
    labels = torch.where(use[:, None], torch.maximum(y, y[partner]), y)
    return mixed, labels


def spec_augment(
    spec: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    time_masks: int = 2,
    time_width: int = 20,
    freq_masks: int = 2,
    freq_width: int = 8,
    p: float = 1.0,
) -> torch.Tensor:
    """SpecAugment-style masking of a normalised spectrogram [batch, 1, bands, frames].

    Each picked row (chance ``p``) gets ``time_masks`` stripes of 0 to ``time_width`` frames
    and ``freq_masks`` stripes of 0 to ``freq_width`` bands set to 0, the spectrogram's mean
    after normalisation (Park et al. 2019). A call partly hidden or a band drowned by insects
    must not stop the model; labels do not change.
    """
    b, _, bands, frames = spec.shape
    dev = spec.device
    keep = torch.ones(b, bands, frames, dtype=torch.bool, device=dev)
    use = _chance(b, p, generator, dev)
    for count, width, size, axis in ((time_masks, time_width, frames, 2), (freq_masks, freq_width, bands, 1)):
        width = min(width, size)
        for _ in range(count if width > 0 else 0):
            w = torch.randint(0, width + 1, (b,), generator=generator, device=dev)
            start = (torch.rand(b, generator=generator, device=dev) * (size - w + 1)).long()
            pos = torch.arange(size, device=dev)[None, :]
            band = (pos >= start[:, None]) & (pos < (start + w)[:, None]) & use[:, None]  # [b, size]
            keep &= ~(band[:, None, :] if axis == 2 else band[:, :, None])
    return spec * keep[:, None].to(spec.dtype)


def background_bank(waves: list, length: int) -> torch.Tensor:
    """Cut background recordings into a bank [m, length] for ``overlay_background``.

    Each recording gives windows every ``length // 2`` samples plus one ending at its end,
    so a long background contributes many segments; recordings shorter than ``length`` are
    zero-padded once. Silent segments are dropped (they cannot set an SNR).
    """
    segs: list[torch.Tensor] = []
    for w in waves:
        x = torch.as_tensor(w, dtype=torch.float32).flatten()
        if x.numel() == 0:
            continue
        if x.numel() <= length:
            segs.append(torch.nn.functional.pad(x, (0, length - x.numel())))
            continue
        starts = list(range(0, x.numel() - length + 1, max(1, length // 2)))
        if starts[-1] != x.numel() - length:
            starts.append(x.numel() - length)
        segs.extend(x[s:s + length] for s in starts)
    segs = [s for s in segs if float(s.abs().max()) > 0]
    if not segs:
        raise ValueError("no usable (non-silent) background audio")
    return torch.stack(segs)


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    backgrounds: torch.Tensor | None = None,
    overlay_p: float = 0.0,
    snr_db: tuple[float, float] = (0.0, 20.0),
    gain_db: tuple[float, float] = (0.0, 0.0),
    mix_p: float = 0.0,
    shift: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training-batch pipeline: time shift, background overlay, gain, then clip mixing.

    Only mixing changes labels (to the union of the two clips'); shift, overlay and gain
    never do. (SpecAugment masks come later, on the spectrogram: ``spec_augment``.)
    """
    if shift > 0:
        x = time_shift(x, shift, generator)
    if overlay_p > 0:
        if backgrounds is None:
            raise ValueError("overlay_p > 0 needs a background bank")
        x, _ = overlay_background(x, backgrounds, snr_db, generator, p=overlay_p)
    if gain_db != (0.0, 0.0):
        x = random_gain(x, gain_db, generator)
    if mix_p > 0:
        x, y = mix_clips(x, y, generator, p=mix_p)
    return x, y
