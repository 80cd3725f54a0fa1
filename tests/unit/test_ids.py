from __future__ import annotations

import pytest

from vmrt.errors import InvalidArgumentError
from vmrt.ids import validate_id


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../x", "a\nb", "a\x00b", "a b", "x" * 1025])
def test_bad_ids(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_id(bad)


@pytest.mark.parametrize("good", ["a", "abc-123_x.y+z", "0" * 64, "x" * 1024])
def test_good_ids(good: str) -> None:
    assert validate_id(good) == good
