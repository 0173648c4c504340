"""Bucket storage: URIs (``s3://``, ``gs://``, ...) read and written through pyarrow, as Ray does.

Ray keeps a sweep's trials and Tune's experiment state under ``storage_path`` through pyarrow's
filesystems; what qa-ray writes there itself (the sweep's state, see :mod:`qa_ray.sweep.state`)
and what it reads back (a teacher's checkpoint) goes through the same layer, so the same
settings reach both. S3-compatible stores (MinIO, Ceph, a cloud's S3 API) are named as the
AWS CLI and boto3 name them: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` in the
environment (:func:`s3_endpoint_to_environment` makes both spellings reach pyarrow).

An object in a bucket appears whole when its upload completes, so a reader never sees half a
file; :func:`write_bytes` uploads to a temporary key and moves it into place, so a reader never
sees a key that a failed upload truncated either.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.fs

__all__ = [
    "exists",
    "fetch_folder",
    "is_uri",
    "join",
    "read_bytes",
    "s3_endpoint_to_environment",
    "write_bytes",
]


def is_uri(path: str) -> bool:
    """``s3://bucket/x``, ``gs://...``: storage read through pyarrow, not a local folder."""
    return "://" in str(path)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a folder or a URI."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def s3_endpoint_to_environment() -> None:
    """``AWS_ENDPOINT_URL_S3`` (the AWS CLI's S3-only spelling) copied to ``AWS_ENDPOINT_URL``,
    which pyarrow 25 (Ray's storage layer) reads; a set ``AWS_ENDPOINT_URL`` is kept."""
    s3 = os.environ.get("AWS_ENDPOINT_URL_S3")
    if s3 and not os.environ.get("AWS_ENDPOINT_URL"):
        os.environ["AWS_ENDPOINT_URL"] = s3


def _fs(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs

    s3_endpoint_to_environment()
    return pyarrow.fs.FileSystem.from_uri(uri)


def exists(uri: str) -> bool:
    """Whether ``uri`` names a file or a folder (a key prefix) in its store."""
    import pyarrow.fs

    fs, path = _fs(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def read_bytes(uri: str) -> bytes | None:
    """The object at ``uri``, or None if there is none."""
    import pyarrow.fs

    fs, path = _fs(uri)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Writes ``data`` at ``uri`` so that a reader sees the old object or the new one, whole."""
    fs, path = _fs(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def delete(uri: str) -> None:
    """Removes the object at ``uri`` if it is there."""
    import pyarrow.fs

    fs, path = _fs(uri)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        fs.delete_file(path)


def fetch_folder(uri: str, cache_dir: str | None = None) -> str:
    """A local copy of the folder at ``uri`` (a checkpoint in a bucket), downloaded once into
    ``cache_dir`` (default ``$QA_RAY_CACHE_DIR/remote`` or ``~/.cache/qa_ray/remote``) and
    reused while its listing is unchanged; a local path is returned as it is.

    Raises:
        FileNotFoundError: nothing is stored under ``uri``.
    """
    if not is_uri(uri):
        return uri
    import pyarrow.fs

    fs, path = _fs(uri)
    infos = [
        i
        for i in fs.get_file_info(
            pyarrow.fs.FileSelector(path, recursive=True, allow_not_found=True)
        )
        if i.type == pyarrow.fs.FileType.File
    ]
    if not infos:
        raise FileNotFoundError(f"nothing is stored under {uri}")
    listing = sorted((i.path[len(path) :].lstrip("/"), i.size) for i in infos)
    key = hashlib.sha256(repr((uri, listing)).encode()).hexdigest()[:16]
    root = Path(
        cache_dir
        or os.path.join(
            os.environ.get("QA_RAY_CACHE_DIR", os.path.expanduser("~/.cache/qa_ray")), "remote"
        )
    )
    dest = root / key
    done = dest / ".qa_ray_complete"
    if done.is_file():
        return str(dest)
    partial = root / f"{key}.partial-{os.getpid()}"
    for rel, _ in listing:
        target = partial / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(f"{path}/{rel}") as src, open(target, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
    (partial / ".qa_ray_complete").write_text(uri)
    try:
        partial.rename(dest)
    except OSError:  # another process of this machine finished it first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return str(dest)
