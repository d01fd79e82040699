import pytest
from notes import create_notes_app


@pytest.fixture
def tokengate_app():
    # The kit serves this app over real HTTP, on a fresh database and Redis.
    return create_notes_app()
