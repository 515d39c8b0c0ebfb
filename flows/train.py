"""Training as Prefect flows: ``pam-train`` and ``pam-train-search``.

Thin on purpose: each task is one call into ``pam.train.run`` and takes and returns the run
folder and small dicts, never audio or tensors. ``pam train CONFIG`` runs ``train_flow``
in-process (no server needed); ``pam search CONFIG`` runs ``hyperparameter_search``.

    prepare-data -> train -> calibrate -> evaluate -> export

A crashed or killed run is resumed by running the same config again: the split is read
back and training continues after the last finished epoch (``checkpoints/last.pt``).
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from pam.train.config import TrainConfig
from pam.train.run import calibrate_model, clear_run, evaluate_model, export_model, prepare_data, train_model
from pam.train.search import pick_best, plan_trials, run_trial, search_dir, write_table


def _log(message: str) -> None:
    get_run_logger().info(message)


@task(name="prepare-data")
def prepare_task(config: dict, run_dir: str) -> dict:
    return prepare_data(TrainConfig.model_validate(config), run_dir, _log)


@task(name="train")
def train_task(run_dir: str, progress: bool = True) -> dict:
    return train_model(run_dir, progress=progress, log=_log)


@task(name="calibrate")
def calibrate_task(run_dir: str) -> dict:
    return calibrate_model(run_dir, _log)


@task(name="evaluate")
def evaluate_task(run_dir: str) -> dict:
    result = evaluate_model(run_dir, _log)
    from pathlib import Path

    report = Path(run_dir) / "evaluation" / "report.md"
    if report.is_file():
        create_markdown_artifact(markdown=report.read_text(), key="pam-train-evaluation",
                                 description=f"evaluation of {Path(run_dir).name}")
    return result


@task(name="export")
def export_task(run_dir: str) -> dict:
    return export_model(run_dir, _log)


@flow(name="pam-train", log_prints=True)
def train_flow(config: dict, run_dir: str | None = None, fresh: bool = False, progress: bool = True) -> dict:
    """Prepare, train, calibrate, evaluate and export one model; returns each stage's summary."""
    conf = TrainConfig.model_validate(config)
    run_dir = run_dir or str(conf.run_dir())
    if fresh:
        from pathlib import Path

        clear_run(Path(run_dir))
    prepared = prepare_task(config, run_dir)
    trained = train_task(run_dir, progress)
    calibrated = calibrate_task(run_dir)
    evaluated = evaluate_task(run_dir)
    exported = export_task(run_dir)
    return {"run_dir": run_dir, "prepare": prepared, "train": trained, "calibrate": calibrated,
            "evaluate": evaluated, "export": exported}


@task(name="trial")
def trial_task(trial: dict) -> dict:
    return run_trial(trial, progress=False, log=_log)


@flow(name="pam-train-trials")
def trials_flow(trials: list[dict]) -> list[dict]:
    """Map a training task over the trials on this flow's task runner; failed trials are reported."""
    futures = trial_task.map(trials)
    results = []
    for t, f in zip(trials, futures):
        try:
            results.append(f.result())
        except Exception as exc:  # noqa: BLE001 - a failed trial is reported, the others still count
            get_run_logger().warning("trial %d (%s) failed: %s", t["trial"], t["settings"], exc)
    return results


@flow(name="pam-train-search", log_prints=True)
def hyperparameter_search(config: dict, root: str | None = None) -> dict:
    """Map training over the config's ``search`` settings, keep the best by validation, finish it.

    Trials run in a subflow on a thread pool of ``search.max_parallel`` workers (one GPU
    each when there are several); the best trial by validation AP (or loss) is then
    calibrated, evaluated and exported like a single run.
    """
    from pathlib import Path

    conf = TrainConfig.model_validate(config)
    root_dir = Path(root) if root else search_dir(conf)
    trials = plan_trials(conf, root_dir)
    runner = ThreadPoolTaskRunner(max_workers=conf.search.max_parallel)
    results = trials_flow.with_options(task_runner=runner)(trials)
    best = pick_best(results, conf.search.metric)
    table = write_table(results, root_dir, best)
    create_markdown_artifact(markdown=(root_dir / "search.md").read_text(), key="pam-train-search",
                             description=f"hyperparameter search {root_dir.name}")
    calibrate_task(best["run_dir"])
    evaluate_task(best["run_dir"])
    exported = export_task(best["run_dir"])
    return {"root": str(root_dir), "table": str(table), "best": best, "results": results, "export": exported}


def search(config: dict, root: str | None = None) -> dict:
    """Run the ``hyperparameter_search`` flow (kept for symmetry with ``train_flow``)."""
    return hyperparameter_search(config, root)
