"""forsaken_jax: machine unlearning in JAX.

Forsaken ("Learn to Forget", arXiv 2003.10933) removes a trained model's
memorization of a forget set with a trainable dummy-gradient generator; the
membership-inference audit in `forsaken_jax.mia` measures the forgetting.
"""

__version__ = "0.1.0"
