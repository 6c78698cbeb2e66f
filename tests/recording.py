"""Keeping what a patched function returned, for tests that inspect a phase's intermediates."""

from typing import Any

import pytest


def record_returns(mp: pytest.MonkeyPatch, owner: Any, name: str) -> list[Any]:
  """Patches `owner.<name>` so that each call's return value is appended to the list returned."""
  returned = []
  real = getattr(owner, name)

  def recording(*args, **kwargs):
    returned.append(real(*args, **kwargs))
    return returned[-1]

  mp.setattr(owner, name, recording)
  return returned
