"""``pam-train-head``: a few-shot head on the store's embeddings as a Prefect flow.

Thin on purpose: one task, one call into ``pam.train.train_head``; it takes the config as a
dict and returns a small summary dict. ``pam train-head CONFIG`` runs it in-process
(``--no-prefect`` calls the library directly).
"""

from __future__ import annotations

from prefect import flow, task

from pam.train.train_head import HeadConfig, summary, train_head_from_store


@task(name="train-head")
def train_head_task(config: dict) -> dict:
    return summary(train_head_from_store(HeadConfig.model_validate(config)))


@flow(name="pam-train-head", log_prints=True)
def train_head_flow(config: dict) -> dict:
    return train_head_task(config)
