"""Hand-written numpy references for the small ReLU MLPs the tests build (no fixtures)."""

import numpy as np


def softmax(z):
  """Row-wise softmax of a float array."""
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def mlp_grads(params, batch):
  """Hand-written backprop of the mean cross-entropy of a 1-hidden-layer ReLU MLP."""
  w0, b0 = (np.asarray(params["Dense_0"][k], np.float64) for k in ("kernel", "bias"))
  w1, b1 = (np.asarray(params["Dense_1"][k], np.float64) for k in ("kernel", "bias"))
  x = np.asarray(batch["image"], np.float64).reshape(len(batch["label"]), -1)
  y = np.asarray(batch["label"])
  pre = x @ w0 + b0
  h = np.maximum(pre, 0)
  dz = softmax(h @ w1 + b1)
  dz[np.arange(len(y)), y] -= 1
  dz /= len(y)
  dh = (dz @ w1.T) * (pre > 0)
  return {"Dense_0": {"kernel": x.T @ dh, "bias": dh.sum(0)},
          "Dense_1": {"kernel": h.T @ dz, "bias": dz.sum(0)}}
