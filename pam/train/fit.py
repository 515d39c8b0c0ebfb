"""Training loop and clip scoring for a ``PamNet`` on clips held in memory.

Training sees random ``window_s`` crops of the clips (a clip's labels hold for any crop of
it, so clips should not be much longer than the window), augmented on the batch. Scoring
a clip takes the maximum over windows every ``hop_s`` seconds covering it, which is what
detection on a long recording does around a call; validation uses the same scoring, so
early stopping and calibration judge the model as it will be used.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from pam.model import ModelCard, PamNet
from pam.train import augment
from pam.train.clips import ClipSet
from pam.train.metrics import average_precision
from pam.windows import window_grid


@dataclass
class FitConfig:
    """Every knob of a training run (stored in the model card's training info)."""

    epochs: int = 30
    batch_size: int = 32
    repeats: int = 4  # each training clip is drawn this many times per epoch (different crops)
    lr: float = 3e-3
    weight_decay: float = 1e-2
    schedule: str = "onecycle"  # onecycle | cosine
    warmup: float = 0.15  # onecycle: fraction of steps spent warming up
    patience: int = 8  # epochs without a better validation loss before stopping
    min_epochs: int = 0  # states before this epoch are never kept (validation is noisy while warming up)
    min_delta: float = 1e-4
    overlay_p: float = 0.0  # chance that a training example gets a background overlay
    snr_db: tuple[float, float] = (0.0, 20.0)
    gain_db: tuple[float, float] = (-12.0, 12.0)
    mix_p: float = 0.0  # chance that a training example is mixed with another (labels united)
    ema_decay: float = 0.0  # > 0: validate and keep an exponential moving average of the weights
    hop_s: float = 0.5  # window step when scoring validation clips
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["snr_db"] = list(self.snr_db)
        d["gain_db"] = list(self.gain_db)
        return d


@dataclass
class FitResult:
    net: PamNet  # with the best state (lowest validation loss) loaded, in eval mode
    history: pd.DataFrame  # one row per epoch: epoch, train_loss, val_loss, val_ap, lr, seconds
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    config: FitConfig = field(default_factory=FitConfig)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA device is available")
    return torch.device(name)


def _autocast(device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def clip_windows(wave: np.ndarray | torch.Tensor, sample_rate: int, window_s: float, hop_s: float) -> torch.Tensor:
    """The windows [n, window samples] that cover a clip (last one zero-padded), as in detection."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    grid = window_grid(x.shape[0], sample_rate, window_s, hop_s)
    if len(grid) == 0:
        return x.new_zeros(0, grid.window)
    need = int(grid.starts[-1]) + grid.window
    if x.shape[0] < need:
        x = torch.nn.functional.pad(x, (0, need - x.shape[0]))
    index = torch.from_numpy(grid.starts)[:, None] + torch.arange(grid.window)[None, :]
    return x[index]


def score_clips(
    net: PamNet,
    waves: list[np.ndarray] | ClipSet,
    window_s: float,
    sample_rate: int | None = None,
    hop_s: float = 0.5,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    logits: bool = False,
) -> np.ndarray:
    """Clip scores [n_clips, n_classes]: the maximum over the clip's windows.

    Returns sigmoid scores in [0, 1], or the maximum logits with ``logits=True`` (the same
    ranking; what a loss needs). ``waves`` must be at the model's sample rate.
    """
    if isinstance(waves, ClipSet):
        sample_rate = sample_rate or waves.sample_rate
        waves = waves.waves
    sample_rate = sample_rate or net.spectrogram_settings.sample_rate
    if sample_rate != net.spectrogram_settings.sample_rate:
        raise ValueError(f"clips at {sample_rate} Hz but the model expects {net.spectrogram_settings.sample_rate} Hz")
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    n_classes = net.head.out_features
    if not len(waves):
        return np.zeros((0, n_classes), dtype=np.float32)
    windows = [clip_windows(w, sample_rate, window_s, hop_s) for w in waves]
    owner = torch.cat([torch.full((len(w),), i, dtype=torch.long) for i, w in enumerate(windows)])
    stacked = torch.cat(windows)
    was_training = net.training
    net.eval()
    outs = []
    try:
        with torch.inference_mode(), _autocast(dev):
            for i in range(0, stacked.shape[0], batch_size):
                outs.append(net(stacked[i:i + batch_size].to(dev)).float().cpu())
    finally:
        net.train(was_training)
    per_window = torch.cat(outs)
    best = torch.full((len(waves), n_classes), -math.inf)
    best = best.scatter_reduce(0, owner[:, None].expand(-1, n_classes), per_window, reduce="amax")
    return (best if logits else torch.sigmoid(best)).numpy()


def _mean_ap(targets: np.ndarray, scores: np.ndarray) -> float:
    aps = [average_precision(targets[:, k], scores[:, k]) for k in range(targets.shape[1])]
    aps = [a for a in aps if not math.isnan(a)]
    return float(np.mean(aps)) if aps else float("nan")


def _check_set(name: str, data: ClipSet, card: ModelCard) -> None:
    if list(data.classes) != list(card.classes):
        raise ValueError(f"{name} clips have classes {data.classes} but the model card {card.classes}")
    if data.sample_rate != card.sample_rate:
        raise ValueError(f"{name} clips are at {data.sample_rate} Hz but the model expects {card.sample_rate} Hz")


class _Ema:
    """Moving average of a network's state: smoother to validate than the last step's weights.

    With a few steps per epoch on a small set the raw weights (and BatchNorm statistics)
    swing from epoch to epoch; the average follows the same path without the noise.
    """

    def __init__(self, net: nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items()}

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))  # short memory at the start
        for k, v in net.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.state[k].copy_(v)


def _crop_batch(waves: list[np.ndarray], index: np.ndarray, length: int, generator: torch.Generator) -> torch.Tensor:
    rows = [augment.random_crop(torch.from_numpy(waves[i])[None, :], length, generator)[0] for i in index]
    return torch.stack(rows)


def fit(
    card: ModelCard,
    train: ClipSet,
    val: ClipSet | None = None,
    backgrounds: ClipSet | list[np.ndarray] | None = None,
    config: FitConfig | None = None,
    net: PamNet | None = None,
) -> FitResult:
    """Train ``net`` (a new ``card.build()`` when None) and return it with its history.

    AdamW with a one-cycle or cosine schedule; after each epoch the validation clips are
    scored (max over windows) and the state with the lowest validation BCE is kept; training
    stops after ``patience`` epochs without improvement (epochs before ``min_epochs`` are
    neither kept nor counted). Without ``val`` it runs all epochs
    and keeps the last state. ``backgrounds`` (negative clips of the training sites) feed
    the overlay augmentation when ``config.overlay_p > 0``.
    """
    config = config or FitConfig()
    _check_set("training", train, card)
    if val is not None:
        _check_set("validation", val, card)
        if len(val) == 0:
            val = None
    if len(train) < 2:
        raise ValueError("need at least two training clips")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    net = (net or card.build()).to(device)
    win = round(card.window_s * card.sample_rate)

    bank = None
    if config.overlay_p > 0:
        bg = backgrounds.waves if isinstance(backgrounds, ClipSet) else backgrounds
        if not bg:
            raise ValueError("overlay_p > 0 needs background clips")
        bank = augment.background_bank(bg, win).to(device)

    cpu_gen = torch.Generator().manual_seed(config.seed)
    dev_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
    order_rng = np.random.default_rng(config.seed)
    n_examples = config.repeats * len(train)
    steps = max(1, n_examples // config.batch_size)  # full batches only: BatchNorm needs > 1
    batch = min(config.batch_size, n_examples)

    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.epochs * steps
    if config.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total,
                                                    pct_start=config.warmup)
    elif config.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        raise ValueError(f"unknown schedule {config.schedule!r} (onecycle | cosine)")
    loss_fn = nn.BCEWithLogitsLoss()
    targets = torch.from_numpy(train.targets)

    ema = _Ema(net, config.ema_decay) if config.ema_decay > 0 else None
    live: dict | None = None
    rows: list[dict] = []
    best_loss, best_epoch, best_state, bad = math.inf, 0, None, 0
    stopped = False
    bar = tqdm(range(1, config.epochs + 1), desc="epochs", unit="epoch", disable=not config.progress, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        net.train()
        draws = np.concatenate([order_rng.permutation(len(train)) for _ in range(config.repeats)])
        losses = []
        for s in range(steps):
            idx = draws[s * batch:(s + 1) * batch]
            x = _crop_batch(train.waves, idx, win, cpu_gen).to(device, non_blocking=True)
            y = targets[idx].to(device)
            x, y = augment.augment_batch(x, y, dev_gen, backgrounds=bank, overlay_p=config.overlay_p,
                                         snr_db=tuple(config.snr_db), gain_db=tuple(config.gain_db),
                                         mix_p=config.mix_p)
            with _autocast(device):
                out = net(x)
            loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(net)
            losses.append(float(loss.detach()))
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": math.nan,
               "val_ap": math.nan, "lr": opt.param_groups[0]["lr"]}
        if ema is not None:  # judge (and keep) the averaged weights; train on with the live ones
            live = copy.deepcopy(net.state_dict())
            net.load_state_dict(ema.state)
        if val is not None:
            logit = score_clips(net, val.waves, card.window_s, card.sample_rate, config.hop_s, device, logits=True)
            row["val_loss"] = float(loss_fn(torch.from_numpy(logit), torch.from_numpy(val.targets)))
            row["val_ap"] = _mean_ap(val.targets, 1 / (1 + np.exp(-logit)))
            if epoch < config.min_epochs:
                pass
            elif row["val_loss"] < best_loss - config.min_delta:
                best_loss, best_epoch, bad = row["val_loss"], epoch, 0
                best_state = copy.deepcopy(net.state_dict())
            else:
                bad += 1
        if ema is not None and live is not None:
            net.load_state_dict(live)
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        bar.set_postfix(train=f"{row['train_loss']:.3f}", val=f"{row['val_loss']:.3f}", ap=f"{row['val_ap']:.3f}")
        if val is not None and bad >= config.patience:
            stopped = True
            break
    bar.close()
    if best_state is not None:
        net.load_state_dict(best_state)
    else:
        best_epoch = len(rows)
        if ema is not None:
            net.load_state_dict(ema.state)
    net.eval()
    history = pd.DataFrame(rows, columns=["epoch", "train_loss", "val_loss", "val_ap", "lr", "seconds"])
    return FitResult(net=net, history=history, best_epoch=best_epoch, best_val_loss=best_loss,
                     stopped_early=stopped, config=config)
