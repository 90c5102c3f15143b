import pytest


@pytest.fixture(autouse=True)
def _every_backend(target):
    """Run each test of this folder once per registered backend (tests/conftest.py)."""
