"""What a data config yields, known without loading it (no torch here: the start-up checks use it).

Sizes: the train / held-out split of each dataset (train_test_split's rounding) and whether it
works; files: where a file-based dataset's files are, or a one-line error saying where to put them.

MNIST-format (idx) files, plain or gzipped, are checked against the shape their header
declares; CIFAR-10's against torchvision's published MD5s. A bad file is a one-line
:class:`ConfigError` on ``data.root`` naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

from omegaconf import DictConfig

from initopt.config import ConfigError, first_line
from initopt.values import Config

# Where Debian's `dataset-fashion-mnist` package installs the real Fashion-MNIST.
TORCHVISION_CLASSES = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}
SYSTEM_DIRS = {"fashion_mnist": ["/usr/share/datasets/fashion-mnist"]}
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FOLDER = "cifar-10-batches-py"
IDX_UINT8 = 0x08
CHUNK = 1 << 20


def _data_bytes(f, path: Path, header: int) -> int:
    """Bytes after the header: the file size for a plain file, counted by streaming a gzip."""
    if path.suffix != ".gz":
        return path.stat().st_size - header
    n = 0
    while chunk := f.read(CHUNK):
        n += len(chunk)
    return n


def read_idx_dims(path: Path) -> tuple[int, ...]:
    """The array shape an MNIST-format (idx) file declares, checked against its data.

    Format: bytes 0, 0, 0x08 (uint8), ndim; ndim big-endian uint32 sizes; prod(sizes)
    data bytes, nothing more. Plain or gzipped. Raises ValueError saying what is wrong.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != bytes([0, 0, IDX_UINT8]) or not 1 <= head[3] <= 3:
                start = f"0x{head.hex()}" if head else "nothing (empty)"
                raise ValueError(f"is not an MNIST-format (idx, uint8) file: it starts with {start}, "
                                 "not 0x000008 followed by 1 to 3 dimensions")
            raw = f.read(4 * head[3])
            if len(raw) < 4 * head[3]:
                raise ValueError("is truncated inside its header")
            dims = struct.unpack(f">{head[3]}I", raw)
            have, want = _data_bytes(f, path, 4 + len(raw)), math.prod(dims)
    except EOFError as err:  # a gzip stream that stops early
        raise ValueError(f"is truncated ({first_line(err)})") from err
    except (OSError, zlib.error) as err:  # unreadable, or garbage where a gzip stream should be
        kind = "is not a readable gzip file" if path.suffix == ".gz" else "cannot be read"
        raise ValueError(f"{kind} ({first_line(err)})") from err
    if have != want:
        what = "is truncated" if have < want else "is longer than its header says"
        raise ValueError(f"{what}: {have} data bytes where its header declares {'x'.join(map(str, dims))} "
                         f"= {want}")
    return dims


def _idx_labels_max(path: Path, header: int) -> int:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return max(f.read()[header:], default=0)


def _corrupt_file_error(cfg: DictConfig, path: Path, problem: str) -> ConfigError:
    system = any(str(path).startswith(d) for d in SYSTEM_DIRS.get(cfg.name, []))
    fix = ("reinstall it: `apt install --reinstall dataset-fashion-mnist`" if system else
           "replace it with a complete copy, or delete it and set data.download=true when online")
    return ConfigError("data.root", cfg.root, f"{path} {problem}; {fix}")


def verify_idx_files(cfg: DictConfig, found: Path) -> None:
    """The four MNIST-format files in ``found`` are whole and consistent: images 3-d, labels
    1-d with values 0..9, as many labels as images, train and test images of one shape."""
    paths = {f: found / f if (found / f).exists() else found / f"{f}.gz" for f in MNIST_FILES}
    dims = {}
    for f, path in paths.items():
        try:
            dims[f] = read_idx_dims(path)
        except ValueError as err:
            raise _corrupt_file_error(cfg, path, str(err)) from err
        want = 3 if "images" in f else 1
        if len(dims[f]) != want:
            raise _corrupt_file_error(cfg, path, f"holds a {len(dims[f])}-d array where {want}-d is expected")
    train_img, train_lab, test_img, test_lab = MNIST_FILES
    for images, labels in ((train_img, train_lab), (test_img, test_lab)):
        if dims[images][0] != dims[labels][0]:
            raise _corrupt_file_error(cfg, paths[labels], f"has {dims[labels][0]} labels for the "
                                      f"{dims[images][0]} images of {paths[images].name}")
        if _idx_labels_max(paths[labels], 8) > 9:
            raise _corrupt_file_error(cfg, paths[labels], "holds labels above 9")
    if dims[train_img][1:] != dims[test_img][1:]:
        raise _corrupt_file_error(cfg, paths[test_img], f"holds images of {dims[test_img][1:]} pixels, "
                                  f"the training images {dims[train_img][1:]}")


def verify_cifar_files(cfg: DictConfig, root: Path) -> None:
    """Every file torchvision's CIFAR10 reads is present with its published MD5."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import check_integrity

    listed = tvd.CIFAR10.train_list + tvd.CIFAR10.test_list + [[tvd.CIFAR10.meta["filename"],
                                                                 tvd.CIFAR10.meta["md5"]]]
    for name, md5 in listed:
        path = root / CIFAR_FOLDER / name
        if not path.exists():
            raise _corrupt_file_error(cfg, path, "is missing")
        if not check_integrity(str(path), md5):
            raise _corrupt_file_error(cfg, path, "does not match CIFAR-10's published MD5 (truncated or corrupt)")


# ------------------------------------------------ sizes and files, known without loading
def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """(training, held-out) examples of ``n`` split by train_test_split: n_test = ceil(f n)."""
    n_test = math.ceil(test_fraction * n)
    return n - n_test, n_test


def split_works(n: int, test_fraction: float, n_classes: int, min_train: int = 0) -> bool:
    """Whether a stratified split of ``n`` examples of ``n_classes`` balanced classes works:
    every class >= 2 examples (n >= 2C), >= C held-out and >= max(C, min_train) training examples."""
    n_train, n_test = split_sizes(n, test_fraction)
    return n >= 2 * n_classes and n_test >= n_classes and n_train >= max(n_classes, min_train)


def min_generated_samples(test_fraction: float, n_classes: int = 2, min_train: int = 0) -> int:
    """The smallest n for which :func:`split_works` (it is monotone in n).

    Starts from the real-valued bounds n > (C-1)/f and n >= max(C, min_train)/(1-f), then
    steps to the exact integer under train_test_split's rounding.
    """
    need_train = max(n_classes, min_train)
    estimate = max(2 * n_classes, math.floor((n_classes - 1) / test_fraction) + 1,
                   math.ceil(need_train / (1.0 - test_fraction)))
    n = max(2 * n_classes, estimate - 2)
    while not split_works(n, test_fraction, n_classes, min_train):
        n += 1
    return n


def check_split(cfg: Config) -> None:
    """The stratified train / held-out split of generated or scikit-learn data must work."""
    if cfg.name == "lstsq":
        n_train, n_test = split_sizes(cfg.n_samples, cfg.test_fraction)
        if min(n_train, n_test) < len(cfg.sigmas):
            raise ConfigError("data.n_samples", cfg.n_samples, (
                f"leaves {n_train} training and {n_test} held-out examples with data.test_fraction="
                f"{cfg.test_fraction}; each side needs at least len(data.sigmas) = {len(cfg.sigmas)}"))
    elif cfg.name in ("moons", "circles"):
        n_min = min_generated_samples(cfg.test_fraction)
        if cfg.n_samples < n_min:
            raise ConfigError("data.n_samples", cfg.n_samples, (
                f"at least {n_min} with data.test_fraction={cfg.test_fraction}: the stratified split "
                "needs 2 held-out and 2 training examples (one per class on each side)"))
    elif cfg.name == "digits" and not split_works(TRAIN_SIZES["digits"], cfg.test_fraction, 10):
        n_train, n_test = split_sizes(TRAIN_SIZES["digits"], cfg.test_fraction)
        raise ConfigError("data.test_fraction", cfg.test_fraction, (
            f"leaves {n_train} training and {n_test} held-out examples of 1797; the stratified split "
            "needs 10 (one per class) on each side"))


def _candidate_dirs(cfg: Config) -> list[Path]:
    root = Path(cfg.root).expanduser()
    cls = TORCHVISION_CLASSES[cfg.name]
    dirs = [root, root / cls, root / cls / "raw", root / cfg.name]
    return dirs + [Path(d) for d in SYSTEM_DIRS.get(cfg.name, [])]


def find_idx_files(dirs: list[Path]) -> Path | None:
    """The first directory holding all four MNIST-format files, plain or gzipped."""
    for d in dirs:
        if all((d / f).exists() or (d / f"{f}.gz").exists() for f in MNIST_FILES):
            return d
    return None


def missing_files_error(cfg: Config, dirs: list[Path]) -> ConfigError:
    cls = TORCHVISION_CLASSES[cfg.name]
    if cfg.name == "cifar10":
        expected = Path(cfg.root).expanduser() / CIFAR_FOLDER
        return ConfigError("data.root", cfg.root, (
            f"no CIFAR-10 files found: the folder {expected} is missing; unpack cifar-10-python.tar.gz "
            f"in {cfg.root} (it holds {CIFAR_FOLDER}/data_batch_1..5, test_batch, batches.meta), "
            "or set data.download=true when online"))
    where = ", ".join(str(d) for d in dirs)
    hint = " or `apt install dataset-fashion-mnist`" if cfg.name == "fashion_mnist" else ""
    return ConfigError(
        "data.root", cfg.root,
        f"no {cls} files found (looked in {where}); put torchvision's files under "
        f"{cfg.root}/{cls}/raw{hint}, or set data.download=true when online",
    )


def located_files(cfg: Config) -> Path | None:
    """Where the dataset's files are (None: nowhere, a download is needed); stat calls only."""
    if cfg.name == "cifar10":
        root = Path(cfg.root).expanduser()
        return root if (root / CIFAR_FOLDER).exists() else None
    return find_idx_files(_candidate_dirs(cfg))


def check_available(cfg: Config) -> None:
    """Fail at once when a file-based dataset is absent offline (saying where to put the files)
    or its files are truncated or corrupt (naming the file); before anything is cached."""
    if cfg.name not in TORCHVISION_CLASSES:
        return
    found = located_files(cfg)
    if found is None:
        if not cfg.download:
            raise missing_files_error(cfg, _candidate_dirs(cfg))
    elif cfg.name == "cifar10":
        verify_cifar_files(cfg, found)
    else:
        verify_idx_files(cfg, found)


TRAIN_SIZES = {"digits": 1797, "fashion_mnist": 60000, "mnist": 60000, "cifar10": 50000}


def expected_train_size(cfg: Config) -> int:
    """Training examples the config yields, known without loading (train_test_split's rounding)."""
    if cfg.name in TORCHVISION_CLASSES:
        n = TRAIN_SIZES[cfg.name]
    else:
        total = cfg.n_samples if cfg.name in ("moons", "circles", "lstsq") else TRAIN_SIZES[cfg.name]
        n = total - math.ceil(cfg.test_fraction * total)
    return min(n, cfg.limit_train) if cfg.limit_train else n
