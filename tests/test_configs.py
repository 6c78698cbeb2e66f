"""Every experiment config loads, with and without `:runlocal`."""

import importlib
import pathlib

import pytest

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
NAMES = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_shrinks(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  assert module.__doc__ and "python -m experiments." in module.__doc__  # says how to run it
  full, small = module.get_config(), module.get_config("runlocal")
  if "scenarios" in full:  # the benchmark's: experiment configs by scenario
    from experiments import benchmark  # pylint: disable=g-import-not-at-top
    full, small = (benchmark.scenario_config(c, c.run_scenarios[0], 0) for c in (full, small))
  for config in (full, small):
    assert config.scenario.kind in ("ood", "random", "class")
    assert config.train.batch_size > 0 and config.train.steps > 0
    assert config.shadow.num_models % 2 == 0 and config.shadow.num_models >= 2
  assert small.train.steps <= full.train.steps
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("bogus")
