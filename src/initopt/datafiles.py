"""Dataset files on disk, verified before anything reads or caches them.

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

# Where Debian's `dataset-fashion-mnist` package installs the real Fashion-MNIST.
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
