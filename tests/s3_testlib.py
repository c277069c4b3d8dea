"""A real S3-compatible server (moto) on loopback: the `s3` fixture (tests/conftest.py) yields an `S3`."""

from __future__ import annotations

import dataclasses

import pyarrow.fs as pafs


@dataclasses.dataclass
class S3:
    endpoint: str
    fs: pafs.S3FileSystem
    bucket: str

    def uri(self, prefix: str) -> str:
        # pyarrow takes the endpoint from the URI query; credentials come from the environment.
        return f"s3://{self.bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"
