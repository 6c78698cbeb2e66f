"""Shared experiment wiring: the compile-time meter."""

import threading

import jax
import jax.numpy as jnp
import numpy as np

from experiments import common


def test_compile_time_meter_sums_the_programs_built_inside_it():
  # A constant of its own makes every program new to any compilation cache.
  scale = float(np.random.default_rng().integers(1, 2**30))
  x = jnp.ones(3)
  with common.compile_time_meter() as times:
    jax.jit(lambda v: jnp.sin(v) * scale)(x).block_until_ready()
  assert set(times) == {"tracing", "lowering", "xla_compiling"}
  assert all(seconds > 0 for seconds in times.values()), times

  # Nothing is counted once the meter is closed.
  closed = dict(times)
  jax.jit(lambda v: jnp.cos(v) * scale)(x).block_until_ready()
  assert times == closed

  # Programs built on another thread count (the unlearn phase compiles its
  # loop on one), and two meters open at once both see them.
  with common.compile_time_meter() as outer, common.compile_time_meter() as inner:
    thread = threading.Thread(
        target=lambda: jax.jit(lambda v: jnp.tan(v) * scale)(x).block_until_ready())
    thread.start()
    thread.join()
  assert outer["xla_compiling"] > 0 and outer == inner
