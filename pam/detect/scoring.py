"""One model's part of a detection run: what it still has to score (``ModelPlan``), its forward
in slices that survive CUDA running out of memory (``ModelForward``), and the thresholded
hits of the recordings it is scoring (``ScoringLane``).

Several models in one run share the decoded windows: the models with the same sample rate,
window and hop form one group (``window_groups``), each batch of that group's windows is
scored by every model of the group that still needs its recordings, and each model keeps its
own hits, thresholds and work key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from pam.detect.contract import DetectionModel
from pam.detect.detection_rows import PendingDetections
from pam.detect.settings import DetectSettings

log = logging.getLogger("pam.detect.scoring")


@dataclass
class ModelPlan:
    """A model of a run, its settings and work key, and the recordings it still needs."""

    model: DetectionModel
    settings: DetectSettings
    key: str
    todo_ids: set[str]

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def group(self) -> tuple[int, float, float, int | None]:
        """Models with equal groups read the same windows: (rate, window, hop, channel)."""
        s = self.settings
        return (self.model.sample_rate, s.window_s, s.hop_s, s.channel)


def window_groups(plans: list[ModelPlan]) -> list[list[ModelPlan]]:
    """The plans grouped by the windows they read, in first-seen order."""
    groups: dict[tuple, list[ModelPlan]] = {}
    for p in plans:
        groups.setdefault(p.group(), []).append(p)
    return list(groups.values())


class ModelForward:
    """Scores [B, C] in [0, 1], in slices of at most ``limit`` windows.

    A CUDA out-of-memory error halves the limit, for this batch and the rest of the run (a
    card that ran out once will run out again), and the batch goes on in smaller slices.
    """

    def __init__(self, model: DetectionModel, device: torch.device,
                 logger: logging.Logger | logging.LoggerAdapter | None = None):
        self.model = model
        self.device = device
        self.limit: int | None = None
        self.log = logger or log

    def _once(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        enabled = self.device.type == "cuda" and self.model.autocast
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled):
            out = self.model.forward(x)
            return out.scores.float(), out.embeddings

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The scores [B, C] of ``x``."""
        return self.with_embeddings(x)[0]

    def with_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores [B, C] and embeddings [B, E] (None for a model without them) of ``x``."""
        n = x.shape[0]
        out: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        i = 0
        while i < n:
            size = min(self.limit or n, n - i)
            try:
                out.append(self._once(x[i:i + size]))
                i += size
            except torch.cuda.OutOfMemoryError:
                if size <= 1:
                    raise
                torch.cuda.empty_cache()
                self.limit = size // 2
                self.log.warning("CUDA out of memory on a batch of %d windows; going on with batches of %d",
                                 size, self.limit)
        if len(out) == 1:
            return out[0]
        scores = torch.cat([o[0] for o in out])
        return scores, None if out[0][1] is None else torch.cat([o[1] for o in out])


class ScoringLane:
    """One model scoring its recordings of a run: ``needs[i]`` says whether recording i (a
    position in the run's to-do list) is this model's work; ``pending`` holds hits so far.

    ``masks`` (``pam.detect.species_filter.class_masks``): the species filter, as the mask
    row of each recording and the distinct masks; a class masked out of a recording gets a
    threshold no score reaches, so the filter costs one gather per batch, not a pass over rows.
    """

    def __init__(self, plan: ModelPlan, needs: np.ndarray, device: torch.device,
                 logger: logging.Logger | logging.LoggerAdapter | None = None,
                 masks: tuple[np.ndarray, np.ndarray, list] | None = None):
        self.plan = plan
        self.model = plan.model.to(device)
        self.forward = ModelForward(self.model, device, logger)
        vector = np.array([plan.settings.thresholds[c] for c in self.model.classes], dtype=np.float32)
        self.thresholds = torch.from_numpy(vector).to(device)
        self.mask_of: np.ndarray | None = None
        if masks is not None:
            self.mask_of = masks[0]
            table = np.where(masks[1], vector[None, :], np.float32(np.inf)).astype(np.float32)
            self.masked_thresholds = torch.from_numpy(table).to(device)  # [masks, classes]
        self.needs = needs
        self.device = device
        self.pending: dict[int, PendingDetections] = {}

    def score(self, audio: torch.Tensor, rec: np.ndarray, start: np.ndarray) -> None:
        """Score the windows of ``audio`` (on the device) whose recordings this model needs."""
        mask = self.needs[rec]
        if not mask.any():
            return
        if not mask.all():
            audio = audio[torch.from_numpy(mask).to(audio.device)]
            rec, start = rec[mask], start[mask]
        keep = self.plan.settings.embeddings
        scores, emb = self.forward.with_embeddings(audio) if keep else (self.forward(audio), None)
        if keep:
            if emb is None:
                raise RuntimeError(f"model {self.model.describe()} returned no embeddings though it declares "
                                   f"embedding_size {self.model.embedding_size}")
            emb = emb.float().cpu().numpy().astype(np.float16)
        hit_rows, hit_cls = torch.nonzero(scores >= self.thresholds_of(rec), as_tuple=True)
        hit_scores = scores[hit_rows, hit_cls].cpu().numpy()
        hit_rows, hit_cls = hit_rows.cpu().numpy(), hit_cls.cpu().numpy()
        hit_rec = rec[hit_rows]
        for i in np.unique(rec):
            p = self.pending.setdefault(int(i), PendingDetections())
            mine = rec == i
            p.windows += int(mine.sum())
            if emb is not None:
                p.window_starts.append(np.asarray(start[mine], dtype=np.int64))
                p.embeddings.append(emb[mine])
            sel = hit_rec == i
            if sel.any():
                p.starts.append(start[hit_rows[sel]])
                p.classes.append(hit_cls[sel])
                p.scores.append(hit_scores[sel])

    def thresholds_of(self, rec: np.ndarray) -> torch.Tensor:
        """Thresholds [classes] for every window, or [windows, classes] under a species filter."""
        if self.mask_of is None:
            return self.thresholds
        rows = self.mask_of[rec]
        if (rows == rows[0]).all():
            return self.masked_thresholds[int(rows[0])]
        return self.masked_thresholds[torch.from_numpy(rows).to(self.masked_thresholds.device)]

    def finished(self, i: int) -> None:
        if self.needs[i]:
            self.pending.setdefault(i, PendingDetections())
