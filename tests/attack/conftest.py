"""The attack table reuses the export tests' tiny in-process checkpoints."""
import pytest

from export.conftest import inprocess_run, swap_options  # noqa: F401  (a session fixture)


@pytest.fixture(scope="session")
def swap_options_fn():
    return swap_options
