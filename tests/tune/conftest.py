import pytest

from tests.train.conftest import write_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("prepared"))
