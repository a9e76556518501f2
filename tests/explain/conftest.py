import pytest
from registration_phantom import registration_pair


@pytest.fixture(scope="module")
def pair():
    """The registration tests' SYNTHETIC moving/fixed pair (registration_phantom)."""
    return registration_pair()
