"""The default console leaves out what a user does not act on; -v shows it."""

from __future__ import annotations

import logging
import warnings

import pytest

from qa_ray.cli import quiet

# what each quiet logger says, as the library says it
SAID = {
    "ray._private.authentication.authentication_token_setup": (
        logging.WARNING, "Token authentication is enabled for this Ray cluster."),
    "mlflow.store.db.utils": (logging.INFO, "Creating initial MLflow database tables..."),
    "alembic.runtime.migration": (logging.INFO, "Context impl SQLiteImpl."),
    "matplotlib.font_manager": (
        logging.INFO, "Matplotlib is building the font cache; this may take a moment."),
    "optuna.storages._rdb.storage": (
        logging.INFO, "A new study created in RDB with name: quickstart"),
    "ray.tune.tune": (
        logging.INFO, "Wrote the latest version of all result files and experiment state to"),
}  # fmt: skip
OPTUNA = (  # Optuna 5's two forms, the first as a sweep shows it
    "Argument ``group`` is an experimental feature. The interface can change in the future.",
    "BudgetAwareOptunaSearch is experimental (supported from v3.2.0). The interface can "
    "change in the future.",
)


@pytest.fixture
def restored():
    levels = {n: logging.getLogger(n).level for n in [*quiet.QUIET_LOGGERS, ""]}
    with warnings.catch_warnings():
        yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def _shown() -> dict[str, bool]:
    return {n: logging.getLogger(n).isEnabledFor(level) for n, (level, _) in SAID.items()}


def _optuna_warning_shown() -> bool:
    with warnings.catch_warnings(record=True) as caught:
        for text in OPTUNA:  # optuna's ExperimentalWarning is a UserWarning
            warnings.warn(text, UserWarning, stacklevel=1)
    return len(caught) == len(OPTUNA)


def test_the_default_console_drops_library_notices(restored):
    quiet.configure(verbose=False)
    assert _shown() == dict.fromkeys(SAID, False)
    with warnings.catch_warnings(record=True) as caught:
        for text in OPTUNA:
            warnings.warn(text, UserWarning, stacklevel=1)
    assert caught == []
    # what qa-ray and the libraries warn about otherwise still shows
    assert logging.getLogger("qa_ray.sweep.run").isEnabledFor(logging.INFO)
    assert logging.getLogger("mlflow.tracking").isEnabledFor(logging.WARNING)


def test_verbose_shows_them(restored):
    quiet.configure(verbose=False)
    quiet.configure(verbose=True)
    assert _shown() == dict.fromkeys(SAID, True)
    assert _optuna_warning_shown()


def test_the_optuna_filter_matches_optunas_own_warning(restored):
    from optuna._experimental import experimental_class, warn_experimental_argument
    from optuna.exceptions import ExperimentalWarning

    quiet.configure(verbose=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default", ExperimentalWarning)
        quiet.configure(verbose=False)  # after the test's own filter, as in a real run
        experimental_class("3.2.0")(type("Sampler", (), {}))()
        warn_experimental_argument("group")  # what TPESampler(group=True) says in a sweep
    assert [w for w in caught if issubclass(w.category, ExperimentalWarning)] == []
