"""The nightly run's agile-modelling stage (config ``agile``; docs/agile.md#in-the-nightly-run).

After detection has committed, and before the summaries, the run

* applies the registered heads named in ``agile.heads`` (``pam.train.apply_head``): each
  scores only the windows it has not scored yet (its work key), so the night's new
  embeddings, and commits its detections as its own model through the ordinary commit; the
  summaries then count them like any model's;
* brings the similarity index of each of the run's embedding models up to date
  (``agile.similarity_index``; ``pam.analysis.store_index.update_index``: only the new
  embedding files are read).

``plan_agile`` checks the heads against the run's models before any work starts: a head
that is not registered, or that reads another model's embeddings, stops the run in one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pam.config import ConfigError, PamConfig
from pam.store.store import Store

log = logging.getLogger("pam.ops.agile")


@dataclass
class AgilePlan:
    heads: list[str] = field(default_factory=list)  # head ids to apply, in order
    models: list[str] = field(default_factory=list)  # the run's model ids, for the similarity indexes
    similarity_index: bool = False

    @property
    def empty(self) -> bool:
        return not self.heads and not self.similarity_index


def plan_agile(store: Store, config: PamConfig) -> AgilePlan:
    """The heads and indexes the run will update after detection; ConfigError in one line when a
    named head is not registered in ``store`` or reads embeddings this run does not compute.
    Loads the run's models (to know their ids) only when there is something to plan, and once
    per process (``pam.detect.catalog.model_ids``)."""
    agile = config.agile
    if not agile.heads and not agile.similarity_index:
        return AgilePlan()
    from pam.detect.catalog import model_ids
    from pam.store.location import NotOnObjectStorage
    from pam.train.head_registry import read_heads
    from pam.train.heads import HeadError

    if agile.similarity_index and store.remote:  # the index is a folder of files beside the store
        raise ConfigError(f"agile.similarity_index: {store.uri} is on object storage, where the similarity index is "
                          "not kept; set agile.similarity_index: false, or run on a store in a local folder")
    models = model_ids(config.model_specs())  # loaded once per process: the CLI's check and the flow's
    try:
        registered = read_heads(store) if agile.heads else None
    except (NotOnObjectStorage, HeadError) as exc:
        raise ConfigError(f"agile.heads: {exc}") from None
    heads: list[str] = []
    if agile.heads == "all":
        heads = [h for h, m in zip(registered["head_id"], registered["embedding_model_id"]) if m in models]
        if not heads:  # said, not silent: the user asked for heads and none will run
            log.warning("agile.heads: all, but store %s holds no registered head of this run's models (%s); "
                        "`pam train-head` registers one", store.uri, ", ".join(models))
    elif agile.heads:
        reads = dict(zip(registered["head_id"], registered["embedding_model_id"]))
        for head_id in agile.heads:
            if head_id not in reads:
                raise ConfigError(f"agile.heads: head {head_id} is not registered in store {store.uri} "
                                  f"(`pam heads {store.uri}` lists them; `pam train-head` registers one)")
            if reads[head_id] not in models:
                raise ConfigError(f"agile.heads: head {head_id} reads embeddings of model {reads[head_id]}, which "
                                  f"this run does not compute (its models: {', '.join(models)}); add that model "
                                  f"to the config's models, or take the head out of agile.heads")
            heads.append(head_id)
    return AgilePlan(heads=heads, models=models, similarity_index=agile.similarity_index)


def apply_heads_stage(store: Store, plan: AgilePlan,
                      logger: logging.Logger | logging.LoggerAdapter | None = None) -> list[dict]:
    """Apply each planned head to the windows it has not scored; one small dict per head."""
    from pam.train.apply_head import apply_head

    out = []
    for head_id in plan.heads:
        try:
            report = apply_head(store, head_id)
        except Exception as exc:  # one head's failure must not cost the night its summaries
            (logger or log).error("head %s not applied: %s (the night's detections stand; the next run applies it "
                                  "to the windows it has not scored)", head_id, exc)
            out.append({"head_id": head_id, "error": str(exc)})
            continue
        (logger or log).info("head %s: %d recording(s) scored (%d windows, %d detections), %d already done",
                             head_id, report.recordings_done, report.windows, report.detections,
                             report.recordings_skipped)
        out.append({"head_id": head_id, "run_id": report.run_id, "recordings_done": report.recordings_done,
                    "recordings_skipped": report.recordings_skipped, "windows": report.windows,
                    "detections": report.detections})
    return out


def index_stage(store: Store, plan: AgilePlan,
                logger: logging.Logger | logging.LoggerAdapter | None = None) -> list[dict]:
    """Bring the similarity index of each of the run's models that has stored embeddings up to date."""
    from pam.analysis.similar import embedding_models
    from pam.analysis.store_index import update_index

    if not plan.similarity_index:
        return []
    out = []
    stored = set(embedding_models(store))
    for model_id in plan.models:
        if model_id not in stored:
            (logger or log).info("model %s: no stored embeddings yet, no index to update", model_id)
            continue
        try:
            update = update_index(store, model_id)
        except Exception as exc:  # the index is derived: the next run brings it up to date
            (logger or log).error("model %s: similarity index not updated: %s (pam similar updates it before "
                                  "searching)", model_id, exc)
            out.append({"model_id": model_id, "error": str(exc)})
            continue
        (logger or log).info("model %s: index updated, %d window(s) added, %d taken out (%d read from %d new "
                             "file(s)); %d indexed", model_id, update.added, update.removed, update.windows_read,
                             update.files_read, len(update.index))
        out.append({"model_id": model_id, "added": update.added, "removed": update.removed,
                    "windows_read": update.windows_read, "files_read": update.files_read,
                    "indexed": len(update.index)})
    return out
