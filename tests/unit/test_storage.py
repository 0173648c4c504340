"""Bucket storage through pyarrow, against a real S3 API server on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qa_ray import storage


def test_objects_round_trip_and_a_missing_one_reads_none(s3_bucket):
    uri = f"s3://{s3_bucket}/sweep/state.json"
    assert storage.read_bytes(uri) is None
    storage.write_bytes(uri, b"one")
    storage.write_bytes(uri, b"two")  # replaced whole
    assert storage.read_bytes(uri) == b"two"
    assert storage.exists(f"s3://{s3_bucket}/sweep")
    assert not storage.exists(f"s3://{s3_bucket}/other")
    storage.delete(uri)
    assert storage.read_bytes(uri) is None


def test_a_failed_upload_leaves_the_old_object(s3_bucket, monkeypatch):
    uri = f"s3://{s3_bucket}/x.json"
    storage.write_bytes(uri, b"old")
    real = storage._fs

    class LosesTheConnection:  # the upload goes through, moving it into place fails
        def __init__(self, fs):
            self.fs = fs

        def __getattr__(self, name):
            return getattr(self.fs, name)

        def move(self, src, dest):
            raise OSError("connection lost")

    monkeypatch.setattr(storage, "_fs", lambda u: (LosesTheConnection(real(u)[0]), real(u)[1]))
    with pytest.raises(OSError, match="connection lost"):
        storage.write_bytes(uri, b"new")
    monkeypatch.setattr(storage, "_fs", real)
    assert storage.read_bytes(uri) == b"old"


def test_a_folder_in_the_bucket_is_fetched_once_and_again_when_it_changes(s3_bucket, tmp_path):
    base = f"s3://{s3_bucket}/runs/trial/checkpoint_000001"
    storage.write_bytes(f"{base}/config.json", b"{}")
    storage.write_bytes(f"{base}/model/weights.bin", b"w" * 1000)
    first = storage.fetch_folder(base, str(tmp_path))
    assert Path(first, "model", "weights.bin").read_bytes() == b"w" * 1000
    assert storage.fetch_folder(base, str(tmp_path)) == first  # cached
    storage.write_bytes(f"{base}/extra.txt", b"x")
    assert storage.fetch_folder(base, str(tmp_path)) != first
    with pytest.raises(FileNotFoundError, match="nothing is stored"):
        storage.fetch_folder(f"s3://{s3_bucket}/runs/none", str(tmp_path))
    assert storage.fetch_folder("/a/local/folder") == "/a/local/folder"


def test_the_s3_only_endpoint_variable_reaches_pyarrow(s3_bucket, s3_endpoint, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    storage.write_bytes(f"s3://{s3_bucket}/y", b"y")
    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint
    assert storage.read_bytes(f"s3://{s3_bucket}/y") == b"y"
