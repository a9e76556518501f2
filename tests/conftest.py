from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "workflow" / "schemas"


@pytest.fixture
def phenotype_schema():
    from ageatlas.cohort.phenotypes import load_schema

    return load_schema(SCHEMAS / "phenotypes.schema.yaml")
