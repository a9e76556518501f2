"""Fixtures shared by the synthetic-cohort tests: one participant and its clean zip."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_helpers import read_zip, write

from ageatlas.synthetic.participants import SyntheticParticipant


@pytest.fixture(scope="session")
def participant():
    return SyntheticParticipant(eid=1000123, sex=1, age=62.0, bmi=27.5, age_offset=1.5)


@pytest.fixture(scope="session")
def clean_zip(participant, tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("clean"), participant)


@pytest.fixture(scope="session")
def clean(clean_zip):
    return read_zip(clean_zip)
