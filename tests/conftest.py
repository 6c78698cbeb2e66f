"""Test configuration: the CPU backend with 8 fake devices.

The flags must be set before jax is first imported, which is why they live
here rather than in a fixture.
"""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
  """A TFDS data dir per test module: a module's runs prepare each dataset once."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache_in_tmp(tmp_path_factory):
  """Points the experiments' compilation cache at a temporary directory.

  The command-line tests start `python -m experiments.*` processes, which
  keep compiled programs in `$FORSAKEN_JAX_COMPILATION_CACHE` (by default
  under the user's home); tests write only below pytest's temporary root.
  """
  key = "FORSAKEN_JAX_COMPILATION_CACHE"
  previous = os.environ.get(key)
  os.environ[key] = str(tmp_path_factory.mktemp("jax_compilation_cache"))
  yield
  if previous is None:
    del os.environ[key]
  else:
    os.environ[key] = previous
