"""Fixtures shared by the ingest tests: a tiny participant's slices and its zip."""

from __future__ import annotations

import pytest
from zip_helpers import build_scan, write_zip


@pytest.fixture
def scan():
    return build_scan()


@pytest.fixture
def good_zip(tmp_path, scan):
    return write_zip(tmp_path / "1000001_20201_2_0.zip", scan.datasets)
