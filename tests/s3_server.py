"""A real S3 API for the storage tests: moto's server on 127.0.0.1 with one bucket.

Import the fixture into a test module: ``from s3_server import s3_bucket  # noqa: F401``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgeseg.search.ui import free_port


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``s3://edgeseg-searches/team``; AWS_* variables point pyarrow, Ray and every child process at
    the server, as they would at MinIO or S3."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "edgeseg-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "edgeseg-test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3").create_bucket(Bucket="edgeseg-searches")
    try:
        yield "s3://edgeseg-searches/team"
    finally:
        server.stop()
