"""File-tree snapshots for the tests that check what a phase wrote (no fixtures)."""

import os


def snapshot(root):
  """`{relative path: (size, mtime_ns)}` of every file under `root`."""
  out = {}
  for directory, _, files in os.walk(root):
    for name in files:
      path = os.path.join(directory, name)
      stat = os.stat(path)
      out[os.path.relpath(path, root)] = (stat.st_size, stat.st_mtime_ns)
  return out
