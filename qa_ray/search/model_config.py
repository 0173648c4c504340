"""A model's ``config.json`` from wherever the user's model is: a local folder, or a hub id.

A hub id resolves as transformers resolves it, with ``huggingface_hub.hf_hub_download``: the
user's cache (``HF_HOME``, ``HF_HUB_CACHE``) and token (``hf auth login``, ``HF_TOKEN``), and
with ``HF_HUB_OFFLINE=1`` the cache alone. It fetches the config, a few KB, never the weights,
and imports no torch: the sweep driver reads shapes with it.

    read_config("google-bert/bert-base-uncased")  # the cache, else the hub
    read_config("models/all-MiniLM-L6-v2")  # a local folder
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_config"]

_TEACHER = "train.distill.teacher"


def read_config(name_or_path: str, field: str = "model.name_or_path") -> dict[str, Any]:
    """The ``config.json`` of a local model folder, or of a hub model id.

    Args:
        name_or_path: a folder, or a hub id (``ORG/NAME``).
        field: the config field it came from, for the messages.

    Raises:
        ValueError: one line naming the field, the value and what to do: a folder without
            config.json, a hub model not in the cache while offline, a gated model without
            access, an unknown id.
    """
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / "config.json"
        if not path.is_file():
            raise ValueError(
                f"`{field}` = {name_or_path!r}: no config.json there (a model folder as "
                "save_pretrained writes it, or a hub id)"
            )
        return json.loads(path.read_text())
    return json.loads(Path(_hub_config(name_or_path, field)).read_text())


def _hub_config(repo_id: str, field: str) -> str:
    """The local path of a hub model's ``config.json``, downloaded into the cache if needed."""
    where = f"`{field}` = {repo_id!r}"
    try:
        from huggingface_hub import constants, hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:  # transformers depends on it; a bare driver may lack it
        raise ValueError(
            f"{where}: no such folder, and reading a hub model's config.json needs "
            "huggingface_hub (pip install huggingface_hub)"
        ) from None
    teacher = "; the teacher is a model you train first (see the sweep file's header)"
    hint = teacher if field == _TEACHER else ""
    try:
        return hf_hub_download(repo_id, "config.json")
    except HFValidationError:
        raise ValueError(f"{where}: no such folder, and not a hub model id{hint}") from None
    except GatedRepoError:  # before RepositoryNotFoundError, its parent
        raise ValueError(
            f"{where}: a gated model: accept its licence on https://huggingface.co/{repo_id} "
            "and log in with `hf auth login` (or set HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        raise ValueError(
            f"{where}: no such folder, and no hub model of that name (a private one needs "
            f"`hf auth login`){hint}"
        ) from None
    except LocalEntryNotFoundError:  # offline, or the hub unreachable, and not in the cache
        offline = " (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
        raise ValueError(
            f"{where}: no such folder, and its config.json is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) with the hub out of reach{offline}: run "
            f"`hf download {repo_id} config.json` where the hub is reachable, or point at a "
            f"local folder{hint}"
        ) from None
    except EntryNotFoundError:
        raise ValueError(f"{where}: the hub model has no config.json") from None
    except OSError as exc:  # the hub answered with an error, or the network failed
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(
            f"{where}: could not read its config.json from the hub ({type(exc).__name__}: {first})"
        ) from None
