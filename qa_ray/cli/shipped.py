"""``qa-ray sweeps list`` and ``qa-ray sweeps copy``: the sweeps and search spaces qa-ray ships
(installed with the package), listed and copied out to edit (as torchtune's ``tune ls`` /
``tune cp``).

    qa-ray sweeps list
    qa-ray sweeps copy quickstart my_sweep.yaml && qa-ray sweep my_sweep.yaml
"""

from __future__ import annotations

import shutil
from pathlib import Path

from qa_ray.cli.codes import EXIT_OK
from qa_ray.errors import ConfigError

_TITLES = {"sweeps": "sweeps", "search_spaces": "search spaces"}


def cmd_list(args) -> int:
    from qa_ray.sweep.shipped import KINDS, description, shipped

    for i, kind in enumerate(KINDS):
        files = shipped(kind)
        width = max((len(p.stem) for p in files), default=0)
        print(("\n" if i else "") + f"{_TITLES[kind]} ({files[0].parent if files else '-'}):")
        for p in files:
            print(f"  {p.stem.ljust(width)}  {description(p)}")
    print("\ncopy one to edit it: qa-ray sweeps copy NAME DEST")
    return EXIT_OK


def cmd_copy(args) -> int:
    from qa_ray.config.files import load_yaml
    from qa_ray.sweep.shipped import KINDS, find, shipped

    source = find(args.name)
    if source is None:
        names = [p.stem for kind in KINDS for p in shipped(kind)]
        raise ConfigError(
            "command line",
            [f"`NAME`: qa-ray ships no sweep or search space named {args.name!r}; one of {names}"],
        )
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / source.name
    if dest.exists() and not args.force:
        raise ConfigError(
            "command line", [f"`DEST`: {str(dest)!r} exists; pass --force to overwrite it"]
        )
    if not dest.parent.is_dir():
        raise ConfigError("command line", [f"`DEST`: no such folder {str(dest.parent)!r}"])
    shutil.copyfile(source, dest)
    print(f"[qa-ray] copied {source.name} to {dest}")
    space = (load_yaml(dest).get("search") or {}).get("space")
    if isinstance(space, str):
        print(
            f"[qa-ray] its search space {space!r} is read from there when that file exists "
            f"where you run the sweep, else from the shipped one; to edit it too: qa-ray "
            f"sweeps copy {Path(space).stem} DEST and point search.space at the copy"
        )
    if source.parent.name == "sweeps":
        print(f"[qa-ray] run it: qa-ray sweep {dest}")
    return EXIT_OK
