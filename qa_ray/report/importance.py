"""How much each hyperparameter matters for each objective, on the sweep's parent run.

Optuna's default importance evaluator (PED-ANOVA in Optuna 5) over the sweep's own study, once
per objective (``target=lambda t: t.values[i]``, negated for a maximized one, as that evaluator
reads lower as better): what drives F1, what drives memory. Written at
the sweep's end under ``importance/``: ``param_importance.json`` (an MLflow table: objective,
param, importance), and per objective Optuna's own plot, ``<metric>.html`` (plotly) and
``<metric>.png`` (matplotlib). The plots need the ``plots`` extra and are skipped without it.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

from qa_ray.tracking import runs as tracking

__all__ = ["param_importances", "publish_importance"]

logger = logging.getLogger(__name__)

TABLE = "importance/param_importance.json"


def param_importances(study, objectives: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{objective: {param: importance}}`` over the study's completed trials, each objective's
    importances summing to 1, most important first. Empty when fewer than two trials completed
    or no parameter varied (Optuna has nothing to attribute)."""
    import optuna

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(done) < 2 or not any(len(t.params) for t in done):
        return {}
    out: dict[str, dict[str, float]] = {}
    for i, name in enumerate(objectives):
        try:
            with warnings.catch_warnings():
                # PED-ANOVA warns of regimes with fewer than 2 trials (a small sweep always
                # has them) and that it ranks low targets (_target negates maximized ones):
                # neither is news on a sweep's console, every time.
                warnings.filterwarnings("ignore", module=r"optuna\.importance")
                out[name] = dict(
                    optuna.importance.get_param_importances(
                        study, target=_target(study, i), normalize=True
                    )
                )
        except (RuntimeError, ValueError) as exc:  # e.g. every completed trial alike
            logger.info("no parameter importance for %s: %s", name, exc)
    return out


def _target(study, i: int):
    """Objective ``i`` as Optuna's default evaluator (PED-ANOVA, Optuna 5) reads a target:
    lower is better, so a maximized objective is negated."""
    sign = -1.0 if study.directions[i].name == "MAXIMIZE" else 1.0
    return lambda t: sign * t.values[i]


def publish_importance(
    uri: str, parent_id: str, study_db: str | os.PathLike, study_name: str, objectives
) -> dict[str, dict[str, float]]:
    """Reads the study at ``study_db`` (its SQLite file), computes :func:`param_importances`
    and logs the table and the plots on the parent run; returns the importances."""
    import optuna

    if not os.path.isfile(study_db):
        return {}
    study = optuna.load_study(study_name=study_name, storage=f"sqlite:///{study_db}")
    names = list(objectives)
    found = param_importances(study, names)
    if not found:
        return found
    client = tracking.mlflow_client(uri)
    rows: dict[str, list[Any]] = {"objective": [], "param": [], "importance": []}
    for name, values in found.items():
        for param, value in values.items():
            rows["objective"].append(name)
            rows["param"].append(param)
            rows["importance"].append(round(float(value), 6))
    client.log_table(parent_id, rows, TABLE)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PED-ANOVA's, as above; "plot_* is experimental"
        _plots(study, names, found, d)
        if os.listdir(d):
            client.log_artifacts(parent_id, d, artifact_path="importance")
    return found


def _plots(study, names: list[str], found: dict, folder: str) -> None:
    """Optuna's own importance plots, one per objective; none without plotly / matplotlib."""
    for i, name in enumerate(names):
        if name not in found:
            continue

        target = _target(study, i)
        try:
            from optuna.visualization import plot_param_importances

            fig = plot_param_importances(study, target=target, target_name=name)
            fig.write_html(os.path.join(folder, f"{name}.html"), include_plotlyjs="cdn")
        except ImportError:
            logger.info("plotly is not installed: no importance plot (pip install 'qa-ray[plots]')")
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from optuna.visualization.matplotlib import plot_param_importances as plot_png

            ax = plot_png(study, target=target, target_name=name)
            ax.figure.savefig(os.path.join(folder, f"{name}.png"), bbox_inches="tight", dpi=120)
            plt.close(ax.figure)
        except ImportError:
            logger.info("matplotlib is not installed: no importance PNG")
