"""The `case` fixture: one small model configuration per backbone (see backbone_cases.py)."""

from __future__ import annotations

import pytest
from backbone_cases import CASES


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> str:
    return request.param
