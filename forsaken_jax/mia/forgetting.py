"""The forgetting rate (FR) of "Learn to Forget" (arXiv 2003.10933).

A membership oracle (any attack in this package) judges each forget-set sample
member or non-member, once on the model before unlearning and once after:

  B_T = #judged member before,  B_F = #judged non-member before,
  A_F = #judged non-member after,  FR = (A_F - B_F) / B_T.

FR is the share of the originally "memorized" samples that moved to
"unknown". It compares counts, not individual samples, so it can be negative
(the unlearned model looks *more* like it trained on the forget set) and it
is undefined when the oracle judged no sample a member before (B_T = 0); the
result then says so instead of dividing by zero. Report it beside the FR of a
model retrained without the forget set, under the same oracle, and always name
the oracle.
"""

import dataclasses

import numpy as np
from jax.typing import ArrayLike


def _as_membership(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a 1-D boolean array; got shape {x.shape}")
  if x.shape[0] == 0:
    raise ValueError(f"{name} must not be empty; got shape {x.shape}")
  if x.dtype == np.bool_:
    return x
  # Scores passed by mistake are floats; hard judgements are bool or 0/1.
  if not np.issubdtype(x.dtype, np.integer):
    raise ValueError(
        f"{name} must hold boolean membership judgements (bool or 0/1 integers); got dtype "
        f"{x.dtype}; threshold scores first, e.g. with predict_member")
  bad = (x != 0) & (x != 1)
  if bad.any():
    raise ValueError(
        f"{name} must hold only 0 and 1; got {x[bad][0]} at index {int(np.argmax(bad))}")
  return x.astype(bool)


@dataclasses.dataclass(frozen=True)
class ForgettingRate:
  """Counts and rate of one forgetting-rate measurement.

  Attributes:
    b_t: forget samples judged member before unlearning.
    b_f: forget samples judged non-member before unlearning.
    a_f: forget samples judged non-member after unlearning.
    n: number of forget samples.
    rate: `(a_f - b_f) / b_t`, or None when `b_t == 0` (undefined).
    oracle: the membership oracle that made the judgements, e.g.
      "lira_online" or "threshold:loss"; empty if not given.
  """
  b_t: int
  b_f: int
  a_f: int
  n: int
  rate: float | None
  oracle: str = ""

  @property
  def a_t(self) -> int:
    """Forget samples judged member after unlearning."""
    return self.n - self.a_f

  @property
  def defined(self) -> bool:
    return self.rate is not None

  def format(self, *, digits: int = 1) -> str:
    """E.g. `"93.0% (B_T=100, B_F=0, A_F=93)"` or `"undefined (B_T=0)"`.

    The oracle, when set, is appended inside the parentheses.
    """
    suffix = f", oracle={self.oracle}" if self.oracle else ""
    if self.rate is None:
      return f"undefined (B_T=0{suffix})"
    return f"{100 * self.rate:.{digits}f}% (B_T={self.b_t}, B_F={self.b_f}, A_F={self.a_f}{suffix})"

  def __str__(self) -> str:
    return self.format()


def forgetting_rate(member_before: ArrayLike, member_after: ArrayLike,
                    *, oracle: str = "") -> ForgettingRate:
  """Computes the forgetting rate from an oracle's judgements.

  Args:
    member_before: `[n]` bool, the oracle's judgement of each forget sample on
      the model before unlearning (True = member).
    member_after: `[n]` bool, the same oracle's judgement of the same samples,
      in the same order, on the unlearned (or retrained) model.
    oracle: name of the oracle, carried into the result and its text.

  Returns:
    A `ForgettingRate`; its `rate` is None when `B_T = 0`.

  Example:
    >>> before = np.array([True, True, True, False])
    >>> after = np.array([False, False, True, False])
    >>> str(forgetting_rate(before, after))  # (3 - 1) / 3
    '66.7% (B_T=3, B_F=1, A_F=3)'
  """
  before = _as_membership(member_before, "member_before")
  after = _as_membership(member_after, "member_after")
  if before.shape != after.shape:
    raise ValueError(
        f"member_before and member_after must judge the same samples; got shapes "
        f"{before.shape} and {after.shape}")
  n = int(before.shape[0])
  b_t = int(before.sum())
  b_f = n - b_t
  a_f = n - int(after.sum())
  rate = None if b_t == 0 else (a_f - b_f) / b_t
  return ForgettingRate(b_t=b_t, b_f=b_f, a_f=a_f, n=n, rate=rate, oracle=str(oracle))
