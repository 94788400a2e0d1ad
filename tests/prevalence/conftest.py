from __future__ import annotations

import pytest

from .disks import Disk, make_disk


@pytest.fixture(params=["os", "sim"])
def disk(request, tmp_path) -> Disk:
    """Each test that takes it runs on the real disk and on SimFileSystem."""
    return make_disk(request.param, tmp_path)
