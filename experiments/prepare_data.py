"""Prepares datasets into the TFDS data dir, in array_record format.

Local datasets are built offline from files on the machine; TFDS catalog
datasets are downloaded and prepared, which needs network access and
TensorFlow (`pip install 'forsaken_jax[tf]'`).

Usage:
  python -m experiments.prepare_data --dataset mnist5k_local
  python -m experiments.prepare_data --dataset cifar10 --data_dir /data/tfds
  python -m experiments.prepare_data --list
"""

import argparse
import sys
import time

from forsaken_jax import data
from forsaken_jax.data import catalog


def prepare(name: str, data_dir: str) -> None:
  """Prepares one dataset (local builder or catalog download)."""
  if data.is_local(name):
    data.prepare_local(name, data_dir=data_dir)
  else:
    data.prepare_catalog(name, data_dir=data_dir)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dataset", action="append", default=[],
                      help="dataset name, optionally name/config; repeat for several")
  parser.add_argument("--data_dir", default=None,
                      help=f"TFDS data dir (default: ${catalog.DATA_DIR_ENV} or "
                           f"{data.default_data_dir()})")
  parser.add_argument("--list", action="store_true", help="list the known dataset names and exit")
  args = parser.parse_args(argv)

  if args.list:
    for name, description in data.available_datasets().items():
      print(f"{name:32s} {description}")
    return 0
  if not args.dataset:
    parser.error("give --dataset NAME (or --list)")
  data_dir = args.data_dir or data.default_data_dir()
  for name in args.dataset:
    start = time.perf_counter()
    try:
      prepare(name, data_dir)
    except (ValueError, data.DatasetUnavailableError) as e:
      print(f"error: {name}: {e}", file=sys.stderr)
      return 1
    print(f"{name}: prepared in {data_dir} ({time.perf_counter() - start:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
