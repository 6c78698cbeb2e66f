"""Errors raised when a dataset cannot be made available.

Bad arguments raise `ValueError` like everywhere else in the library. The
errors here are about the environment instead (files that are not installed, a
dataset that was never prepared, no network), so they derive from
`DatasetUnavailableError`, a `RuntimeError`: callers that want to fall back to
another dataset catch that one class.
"""


class DatasetUnavailableError(RuntimeError):
  """A dataset cannot be read in this environment; the message says how to fix it."""


class DatasetNotPreparedError(DatasetUnavailableError):
  """A TFDS catalog dataset is not prepared (in array_record format) in the data dir."""


class DatasetFilesNotFoundError(DatasetUnavailableError, FileNotFoundError):
  """The raw files a local builder reads are missing."""
