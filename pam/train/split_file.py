"""A training run's split file (``split.csv``: every clip and its split) and the fingerprint of
its labelled data; ``pam.train.run`` writes them in ``prepare_data`` and every later stage reads
the split back from here, so that the split of a run is fixed once and reproducible."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pandas as pd

from pam.io.manifest import fingerprint as file_fingerprint
from pam.train.clips import LabelledClip

SPLIT_COLUMNS = ["path", "start_s", "end_s", "labels", "site", "recording", "split"]


class RunError(ValueError):
    """A run folder that cannot be continued, with the reason."""


def write_split(clips: list[LabelledClip], splits: list[str], path: Path) -> None:
    frame = pd.DataFrame({
        "path": [str(c.path) for c in clips], "start_s": [c.start_s for c in clips],
        "end_s": [c.end_s for c in clips], "labels": [";".join(c.labels) for c in clips],
        "site": [c.site or "" for c in clips], "recording": [c.recording for c in clips], "split": splits,
    }, columns=SPLIT_COLUMNS)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def read_split(run_dir: str | os.PathLike) -> tuple[list[LabelledClip], list[str]]:
    path = Path(run_dir) / "split.csv"
    if not path.is_file():
        raise RunError(f"{run_dir}: no split.csv (run prepare_data first)")
    frame = pd.read_csv(path, dtype={"path": str, "labels": str, "site": str, "recording": str, "split": str},
                        keep_default_na=False)
    clips = [LabelledClip(Path(r["path"]), float(r["start_s"]), float(r["end_s"]),
                          tuple(x for x in r["labels"].split(";") if x), r["site"] or None, r["recording"])
             for r in frame.to_dict("records")]
    return clips, frame["split"].tolist()


def clip_key(c: LabelledClip) -> tuple:
    return (str(c.path), round(c.start_s, 6), round(c.end_s, 6), c.labels, c.site, c.recording)


def data_fingerprint(clips: list[LabelledClip], splits: list[str], backgrounds: list[Path]) -> str:
    """Hash of the labelled audio (by content, not by where it lies), labels, split and backgrounds."""
    cache: dict[Path, str] = {}

    def fp(p: Path) -> str:
        if p not in cache:
            cache[p] = file_fingerprint(p, p.stat().st_size)
        return cache[p]

    h = hashlib.sha256()
    for c, s in sorted(zip(clips, splits), key=lambda cs: (fp(cs[0].path), cs[0].start_s, cs[0].end_s)):
        h.update(f"{fp(c.path)}|{c.start_s:.6f}|{c.end_s:.6f}|{';'.join(c.labels)}|{c.site}|{s}\n".encode())
    for b in sorted(fp(p) for p in backgrounds):
        h.update(f"bg|{b}\n".encode())
    return h.hexdigest()[:16]


def counts(clips: list[LabelledClip], splits: list[str]) -> dict:
    out: dict = {}
    for c, s in zip(clips, splits):
        key = f"{s}/{c.site or '-'}/{'+'.join(c.labels) or 'none'}"
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
