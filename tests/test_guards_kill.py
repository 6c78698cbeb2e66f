"""Guards on resumption after a hard kill: SIGKILL, rerun, the uninterrupted result.

Each of the train, shadow, unlearn and retrain phases is started as its
command line (`python -m experiments.<phase>`) on scikit-learn's 8x8 digits
and killed twice with SIGKILL: once at a random point of its loop drawn from
a seeded RNG (the seed is in the test id), once while an Orbax checkpoint is being written
(its `<step>.orbax-checkpoint-tmp` directory exists and has not been renamed
to `<step>`). After each kill the checkpoint directory may hold only
finalized steps and such leftovers, the leftover is never listed as a step,
and the next run says it resumed from the last finalized step. The third run
finishes, and its final checkpoint must equal, bit for bit, that of the
uninterrupted run of the same config, computed in this process by the phase
functions (`reference`).

Why exact equality: on one machine the CPU backend runs the same compiled
program on the same inputs to the same bits, Orbax stores float32 arrays
losslessly, and every input of a step is a pure function of the restored
state and the step number (the batch order of the stored data key and the
step, the unlearning loop's own state). A resumed run therefore either
reproduces every bit or has lost or changed some state, which is what these
tests catch; a tolerance would hide a lost optimizer moment. The same holds
between this process and the subprocesses: both run the same programs on the
same 8 fake devices (tests/conftest.py's XLA_FLAGS are inherited), and the
exact comparison itself is what shows the in-process reference equivalent.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments import common
from experiments import retrain as retrain_phase
from experiments import shadow as shadow_phase
from experiments import train as train_phase
from experiments import unlearn as unlearn_phase
from experiments.configs import digits
from forsaken_jax import checkpoints
from forsaken_jax.data import catalog
from file_snapshots import snapshot

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASE_FUNCTIONS = {"train": train_phase.train_and_evaluate, "shadow": shadow_phase.train_shadows,
                   "unlearn": unlearn_phase.unlearn, "retrain": retrain_phase.retrain}
# `digits.py:runlocal` (30 training steps) with closer checkpoints, so that
# a kill can land between saves or during one (here a save takes longer than
# the steps between two saves).
OVERRIDES = {
    "train.progress": False,
    "train.checkpoint_every": 3,  # of 30 steps
    "shadow.checkpoint_every": 3,
    # A fixed number of generator steps, each checkpointed.
    "unlearn.max_steps": 8,
    "unlearn.patience": 9,
    "unlearn.stop_at_target": False,
    "unlearn.checkpoint_every": 1,
}
CHECKPOINT_EVERY = {"train": OVERRIDES["train.checkpoint_every"],
                    "shadow": OVERRIDES["shadow.checkpoint_every"],
                    "unlearn": OVERRIDES["unlearn.checkpoint_every"],
                    "retrain": OVERRIDES["train.checkpoint_every"]}
FINAL_STEP = {"train": 30, "shadow": 30, "unlearn": 8, "retrain": 30}
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax-checkpoint 0.12: `<step>.orbax-checkpoint-tmp`
TIMEOUT_S = 300


def _config():
  config = digits.get_config("runlocal")
  for name, value in OVERRIDES.items():
    section, key = name.split(".")
    config[section][key] = value
  return config


def _command(phase, workdir):
  flags = [f"--config.{name}={value}" for name, value in OVERRIDES.items()]
  return [sys.executable, "-m", f"experiments.{phase}", "--config",
          "experiments/configs/digits.py:runlocal", *flags, "--workdir", workdir]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir):
  """Every phase run once, uninterrupted, in this process."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  config = _config()
  # Only the final checkpoint, which is faster: checkpoint periods may change
  # on a resume (common.RESUMABLE_KEYS) because they change when a run saves,
  # not what it computes, and the exact comparison checks that as well.
  assert "checkpoint_every" in common.RESUMABLE_KEYS
  assert (config.train.steps, config.unlearn.max_steps) == (FINAL_STEP["train"],
                                                            FINAL_STEP["unlearn"])
  for section in ("train", "shadow", "unlearn"):
    config[section].checkpoint_every = max(FINAL_STEP.values())
  with pytest.MonkeyPatch.context() as mp:
    # The subprocesses find the data through the environment too, so both
    # runs have the same config (its data_dir is part of the signature).
    mp.setenv(catalog.DATA_DIR_ENV, data_dir)
    for phase, run_phase in PHASE_FUNCTIONS.items():
      run_phase(config, workdir)
  return workdir


# --- running and killing a phase ------------------------------------------------


class _Run:
  """A phase's command line running in its own process group, output to a file."""

  def __init__(self, phase, workdir, log_path, data_dir):
    self.phase, self.log_path = phase, log_path
    env = dict(os.environ, JAX_PLATFORMS="cpu", **{catalog.DATA_DIR_ENV: data_dir})
    with open(log_path, "w") as log:
      # A new session: the kill reaches any process the phase starts.
      self.proc = subprocess.Popen(_command(phase, workdir), cwd=REPO_ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)

  def output(self):
    with open(self.log_path) as f:
      return f.read()

  def signal(self, sig):
    os.killpg(self.proc.pid, sig)

  def kill_when(self, directory, ready):
    """SIGKILLs the process group as soon as `ready(entries of directory)` holds.

    Returns:
      The process's output.
    """
    deadline = time.monotonic() + TIMEOUT_S
    while self.proc.poll() is None:
      if time.monotonic() > deadline:
        self.signal(signal.SIGKILL)
        pytest.fail(f"{self.phase} ran for {TIMEOUT_S} s:\n{self.output()[-3000:]}")
      if ready(_entries(directory)):
        self.signal(signal.SIGKILL)
        break
      time.sleep(0.002)
    returncode = self.proc.wait()
    assert returncode == -signal.SIGKILL, (
        f"{self.phase} ended with {returncode} before it could be killed:\n"
        f"{self.output()[-3000:]}")
    return self.output()

  def finish(self):
    """Waits for a clean exit; returns the process's output."""
    try:
      returncode = self.proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
      self.signal(signal.SIGKILL)
      raise
    assert returncode == 0, self.output()[-3000:]
    return self.output()


def _entries(directory):
  try:
    return os.listdir(directory)
  except FileNotFoundError:
    return []


def _tmp_step(name):
  match = re.fullmatch(r"(\d+)" + re.escape(TMP_SUFFIX), name)
  return int(match[1]) if match else None


def _entry_step(name):
  """The step an entry belongs to, finalized or not (None for anything else)."""
  return int(name) if name.isdigit() else _tmp_step(name)


def _kill_at_random_point(run, directory, rng, every):
  """Kills a random 0-200 ms after the save of a random step in the first half began."""
  step = every * int(rng.integers(1, FINAL_STEP[run.phase] // every // 2 + 1))
  delay = float(rng.uniform(0.0, 0.2))

  def ready(names):
    if not any((_entry_step(n) or 0) >= step for n in names):
      return False
    time.sleep(delay)
    return True

  output = run.kill_when(directory, ready)
  return output, f"killed {delay * 1000:.0f} ms after the save of step {step} began"


def _kill_while_saving(run, directory, after_step):
  """Kills while the save of the first step past `after_step` is in flight.

  The process group is stopped (SIGSTOP) the moment the temporary directory
  appears, and killed only if it is still there: stopped, no thread of the
  process can finish the save and rename it.
  """
  def ready(names):
    if not any((_tmp_step(n) or 0) > after_step for n in names):
      return False
    run.signal(signal.SIGSTOP)
    if any((_tmp_step(n) or 0) > after_step for n in _entries(directory)):
      return True
    run.signal(signal.SIGCONT)  # renamed meanwhile: wait for the next save
    return False

  return run.kill_when(directory, ready)


# --- what a kill leaves behind ----------------------------------------------------


def _check_after_kill(directory, phase, context):
  """Asserts the directory holds finalized steps and unfinished leftovers only.

  Only the latest step is read: it is the one a resume loads. An older one
  may be partly deleted, when the kill caught Orbax removing it (it deletes a
  step's files in place once a newer step is final); it is never loaded, and
  the next save removes it.

  Returns:
    `(latest finalized step or None, steps of the leftovers)`.
  """
  names = _entries(directory)
  strays = [n for n in names if _entry_step(n) is None]
  assert not strays, f"{context}: unexpected entries {strays} in {directory}"
  finalized = sorted(int(n) for n in names if n.isdigit())
  leftovers = sorted(_tmp_step(n) for n in names if _tmp_step(n) is not None)
  if not finalized:
    return None, leftovers
  manager = checkpoints.open_manager(directory, read_only=True)
  # The leftover is not a step: a resume cannot pick it up.
  assert list(manager.all_steps()) == finalized, context
  latest = finalized[-1]
  assert all(step > latest for step in leftovers), (context, finalized, leftovers)
  # The step a resume loads is whole: Orbax's commit marker, and its state
  # reads back as the step it is named after.
  assert os.path.isfile(os.path.join(directory, str(latest), "commit_success.txt")), context
  state, _, meta = checkpoints.restore(manager)
  assert int(np.max(np.asarray(state["step"]))) == latest, context
  assert meta["phase"] == phase
  return latest, leftovers


def _assert_resumed_from(output, phase, step, context):
  resumed = re.findall(rf"\[{phase}\] resuming from step (\d+) in ", output)
  expected = [] if step is None else [str(step)]  # none: it started over
  assert resumed == expected, f"{context}: expected to resume from {step}:\n{output[-3000:]}"


def _final_checkpoint(workdir, phase):
  manager = checkpoints.open_manager(common.checkpoint_dir(workdir, phase), read_only=True)
  state, splits, meta = checkpoints.restore(manager)
  return manager.latest_step(), jax.device_get(state), splits, meta


# --- the tests ----------------------------------------------------------------------


@pytest.mark.parametrize("phase,seed", [("train", 0), ("shadow", 1), ("unlearn", 2),
                                        ("retrain", 3)],
                         ids=lambda v: f"seed{v}" if isinstance(v, int) else v)
def test_hard_killed_phase_resumes_to_the_uninterrupted_result(reference, data_dir, tmp_path,
                                                                phase, seed):
  workdir = str(tmp_path / "run")
  upstream = []
  if phase != "train":
    shutil.copytree(os.path.join(reference, "train"), os.path.join(workdir, "train"))
    upstream = snapshot(os.path.join(workdir, "train"))
  directory = common.checkpoint_dir(workdir, phase)
  every = CHECKPOINT_EVERY[phase]
  rng = np.random.default_rng(seed)

  # 1. A kill at a random point: between saves, or during one.
  first = _Run(phase, workdir, str(tmp_path / "first.log"), data_dir)
  output, how = _kill_at_random_point(first, directory, rng, every)
  context = f"{phase}, seed {seed}: first run {how}"
  latest, leftovers = _check_after_kill(directory, phase, context)
  _assert_resumed_from(output, phase, None, context)

  # 2. A kill while a save is being written: a half-written step is left.
  second = _Run(phase, workdir, str(tmp_path / "second.log"), data_dir)
  output = _kill_while_saving(second, directory, max([latest or 0, *leftovers]))
  _assert_resumed_from(output, phase, latest, f"{context}; second run")
  context = f"{phase}, seed {seed}: second run killed while saving"
  latest, leftovers = _check_after_kill(directory, phase, context)
  assert leftovers, f"{context}: no unfinished checkpoint was left"

  # 3. The rerun resumes from the last finalized step, not the half-written one.
  output = _Run(phase, workdir, str(tmp_path / "third.log"), data_dir).finish()
  _assert_resumed_from(output, phase, latest, f"{context}; third run")

  step, state, splits, meta = _final_checkpoint(workdir, phase)
  want_step, want_state, want_splits, _ = _final_checkpoint(reference, phase)
  assert step == want_step == FINAL_STEP[phase]
  assert meta.get("complete", True)
  assert jax.tree.structure(state) == jax.tree.structure(want_state)
  for (path, have), want in zip(jax.tree_util.tree_leaves_with_path(state),
                                jax.tree.leaves(want_state)):
    np.testing.assert_array_equal(have, want, err_msg=f"{context}: {jax.tree_util.keystr(path)}")
  assert splits.keys() == want_splits.keys()
  for key, value in want_splits.items():
    np.testing.assert_array_equal(splits[key], value, err_msg=key)

  # The leftovers were removed by the resuming writer
  # (`checkpoints.open_manager`), the partly deleted steps by later saves,
  # and the upstream phase was only read.
  for root, dirs, files in os.walk(directory):
    assert not [n for n in dirs + files if TMP_SUFFIX in n], (context, root)
  manager = checkpoints.open_manager(directory, read_only=True)
  for kept in manager.all_steps():
    checkpoints.restore(manager, step=kept)
  if upstream:
    assert snapshot(os.path.join(workdir, "train")) == upstream
