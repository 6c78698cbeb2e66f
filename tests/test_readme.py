"""The README's library example runs as written.

The example leaves out what the reader brings (trained parameters, data,
shadow-model statistics); this test supplies small stand-ins of the right
shapes and executes the example's code block verbatim, so that a renamed
function or argument breaks the suite rather than the reader's first try.
"""

import pathlib
import re

import jax
import numpy as np

from forsaken_jax import mia, models

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _library_example() -> str:
  text = README.read_text()
  section = text.split("### The library in your own Flax code", 1)[1]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_library_example_runs(capsys):
  rng = np.random.default_rng(0)
  fns = models.create_model("mlp", num_classes=10, input_shape=(28, 28, 1))

  def batch(n):
    return {"image": rng.uniform(size=(n, 28, 28, 1)).astype(np.float32),
            "label": rng.integers(0, 10, size=n).astype(np.int32)}

  num_examples, num_shadow = 64, 4
  population = batch(num_examples)
  forget = np.zeros(num_examples, bool)
  forget[:8] = True
  namespace = {
      "params": fns.init_fn(jax.random.key(1)),
      "forget_batch": batch(16), "retain_batch": batch(32), "nonmember_batch": batch(32),
      "images": population["image"], "labels": population["label"],
      "shadow_stats": rng.normal(size=(num_shadow, num_examples)).astype(np.float32),
      "keep": np.asarray(mia.balanced_keep_masks(jax.random.key(2), num_shadow, num_examples)),
      "is_member": np.arange(num_examples) % 2 == 0,
      "scores_original": rng.normal(size=num_examples).astype(np.float32) + 1.0,
      "forget": forget,
  }
  exec(compile(_library_example(), str(README), "exec"), namespace)  # pylint: disable=exec-used

  assert jax.tree.structure(namespace["unlearned"]) == jax.tree.structure(namespace["params"])
  assert namespace["scores"].shape == (num_examples,)
  printed = capsys.readouterr().out
  assert "auc" in printed.lower() and "lira" in printed
