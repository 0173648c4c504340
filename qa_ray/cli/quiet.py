"""The default console: qa-ray's own lines and what a user acts on; ``-v`` shows the rest.

Kept off it: the loggers in :data:`QUIET_LOGGERS` below their level, and Optuna's experimental
warning. Tune's configuration box is the sweep driver's to drop (:mod:`qa_ray.sweep.console`).
"""

from __future__ import annotations

import logging
import warnings

# logger -> the level it needs to reach the default console, and why it is kept off it
QUIET_LOGGERS = {
    # Ray 2.60 warns at every local ray.init that token authentication is enabled (or not)
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
    # MLflow 3.17 creating and migrating a new store's tables, at INFO through its own handler
    "mlflow.store.db.utils": logging.WARNING,
    "alembic": logging.WARNING,
    # "Matplotlib is building the font cache; this may take a moment."
    "matplotlib": logging.WARNING,
    # Optuna 5: "A new study created in RDB with name: ..." (the sweep prints its own lines)
    "optuna.storages._rdb.storage": logging.WARNING,
    # Tune's closing "Wrote the latest version of all result files and experiment state to"
    "ray.tune.tune": logging.WARNING,
}
# Optuna's ExperimentalWarning ("Argument ``group`` is an experimental feature.", "X is
# experimental (supported from v...)"), matched by text so the CLI need not import optuna.
OPTUNA_EXPERIMENTAL = r".*(is an experimental feature|is experimental \(supported from v)"


def configure(verbose: bool) -> None:
    """Logging for one ``qa-ray`` command: INFO (DEBUG with ``-v``), the loggers above quiet
    unless ``verbose``."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)  # also where a handler was there before (pytest)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)
    if verbose:
        warnings.filterwarnings("default", message=OPTUNA_EXPERIMENTAL)
    else:
        warnings.filterwarnings("ignore", message=OPTUNA_EXPERIMENTAL)
