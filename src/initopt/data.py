"""Datasets as tensors resident on the device, and a shuffled mini-batch iterator.

Every dataset becomes a :class:`Dataset` of four tensors (train / held-out inputs and
targets) that live on the training device for the whole run; a batch is a slice of a
shuffled index, never a per-sample DataLoader (measured 65x slower on small models).
Two-class data has float targets in {0, 1} and one output logit (BCE); C classes have
integer targets and C logits (cross-entropy); regression (``num_classes == 0``, the generated
least-squares problem ``lstsq``) has float targets and one output (squared error).
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from initopt.cache import cache_dir, keep
from initopt.config import ConfigError, first_line
from initopt.datafiles import (  # what is known without loading (torch-free; initopt.checks)
    MNIST_FILES,
    TORCHVISION_CLASSES,
    check_available,
    located_files,
    split_sizes,
)

CACHE_DIR = cache_dir()


@dataclass
class Dataset:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_outputs(self) -> int:
        """Logits the model must produce: 1 for two classes (BCE) and for regression, C otherwise (CE)."""
        return 1 if self.num_classes in (0, 2) else self.num_classes

    def to(self, device: torch.device, dtype: torch.dtype) -> Dataset:
        y_dtype = dtype if self.num_classes in (0, 2) else torch.long
        return Dataset(
            self.x_train.to(device, dtype),
            self.y_train.to(device, y_dtype),
            self.x_test.to(device, dtype),
            self.y_test.to(device, y_dtype),
            self.num_classes,
        )


# ------------------------------------------------------------------------ generated
def _split(x, y, test_fraction: float, seed: int, num_classes: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return Dataset(
        torch.as_tensor(x_tr), torch.as_tensor(y_tr), torch.as_tensor(x_te),
        torch.as_tensor(y_te), num_classes,
    )


def _sklearn_dataset(cfg: DictConfig) -> Dataset:
    import sklearn.datasets as skd

    if cfg.name == "moons":
        x, y = skd.make_moons(cfg.n_samples, noise=cfg.noise, random_state=cfg.seed)
        num_classes = 2
    elif cfg.name == "circles":
        x, y = skd.make_circles(
            cfg.n_samples, noise=cfg.noise, factor=cfg.factor, random_state=cfg.seed
        )
        num_classes = 2
    else:  # digits: 8x8 images with pixel values 0..16
        x, y = skd.load_digits(return_X_y=True)
        x = x / 16.0 if cfg.preprocess != "none" else x
        num_classes = 10
    return _split(x, y, cfg.test_fraction, cfg.seed, num_classes)


def orthonormal_columns(rng, n: int, d: int):
    """An ``n x d`` matrix with orthonormal columns (Q of the QR of a Gaussian matrix)."""
    import numpy as np

    q, r = np.linalg.qr(rng.standard_normal((n, d)))
    return q * np.sign(np.diag(r))  # a unique Q: the Gaussian's distribution is rotation-invariant


def least_squares_problem(cfg: DictConfig) -> Dataset:
    """The homework's least-squares problem with prescribed singular values (``data=lstsq``).

    With ``d = len(sigmas)`` features, one orthogonal ``V`` (d x d) and ``w* ~ N(0, I_d)`` drawn
    from ``data.seed``, each side (``n`` training, ``m`` held-out rows) is
    ``X = sqrt(n) U diag(sigmas) V^T`` (U: orthonormal columns of its own) and
    ``y = X w* + noise * N(0, 1)``. So the engine's loss, the mean over rows
    ``(1/n) sum_i (x_i w - y_i)^2``, is exactly the homework's ``||X' w - y'||^2`` (no 1/2) with
    ``X' = X / sqrt(n) = U diag(sigmas) V^T``: the closed forms of :mod:`initopt.analytic` apply
    with the same learning rate. Targets are float; ``num_classes = 0`` marks regression.
    """
    import numpy as np

    rng = np.random.default_rng(cfg.seed)
    sigmas = np.asarray(cfg.sigmas, dtype=float)
    d = len(sigmas)
    v = orthonormal_columns(rng, d, d)
    w_star = rng.standard_normal(d)
    sides = []
    for rows in split_sizes(cfg.n_samples, cfg.test_fraction):
        x = np.sqrt(rows) * orthonormal_columns(rng, rows, d) * sigmas @ v.T
        y = x @ w_star + cfg.noise * rng.standard_normal(rows)
        sides += [torch.as_tensor(x), torch.as_tensor(y)]
    return Dataset(*sides, num_classes=0)


# ---------------------------------------------------------------------- torchvision
def _torchvision_root_for_idx(found: Path, cls: str) -> Path:
    """A root in torchvision's layout (root/cls/raw/<files>) holding the files found.

    torchvision reads only uncompressed files in its own layout; flat or gzipped files
    (Debian's package) are unpacked once into a cache, the user's folder left untouched.
    """
    if found.name == "raw" and found.parent.name == cls and all(
        (found / f).exists() for f in MNIST_FILES
    ):
        return found.parent.parent
    stamp = [str(found.resolve())] + [
        f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(found.iterdir())
    ]
    cache_root = CACHE_DIR / "datasets" / hashlib.sha1("|".join(stamp).encode()).hexdigest()[:16]
    raw = cache_root / cls / "raw"
    try:
        _unpack_into(found, raw)
    except OSError as err:  # the cache's fault (not a data file's): name the variable that moves it
        where = Path(err.filename) if err.filename else CACHE_DIR
        if not (where.is_relative_to(CACHE_DIR) or CACHE_DIR.is_relative_to(where)):
            raise
        raise ConfigError("INITOPT_CACHE", str(CACHE_DIR), (
            f"cannot write the dataset cache {raw} ({err.strerror or type(err).__name__}); set INITOPT_CACHE "
            "to a folder you can write to (default ~/.cache/initopt)")) from err
    return cache_root


def _unpack_into(found: Path, raw: Path) -> None:
    """The four files from ``found`` into ``raw``, uncompressed (each through a ``.part`` file)."""
    raw.mkdir(parents=True, exist_ok=True)
    for f in MNIST_FILES:
        if (raw / f).exists():
            continue
        tmp = raw / f"{f}.part"
        if (found / f).exists():
            shutil.copyfile(found / f, tmp)
        else:
            with gzip.open(found / f"{f}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        tmp.rename(raw / f)


def _load_torchvision(cfg: DictConfig) -> tuple[torch.Tensor, ...]:
    import torchvision.datasets as tvd  # imported only here: ~2 s of start-up

    check_available(cfg)
    cls = TORCHVISION_CLASSES[cfg.name]
    found = located_files(cfg)
    try:
        if found is None:  # download=true: torchvision fetches into root
            root = Path(cfg.root).expanduser()
        elif cfg.name == "cifar10":
            root = found
        else:
            root = _torchvision_root_for_idx(found, cls)
        train = getattr(tvd, cls)(str(root), train=True, download=cfg.download)
        test = getattr(tvd, cls)(str(root), train=False, download=cfg.download)
    except ConfigError:  # already says which key (INITOPT_CACHE)
        raise
    except Exception as err:  # offline download, truncated or corrupt files
        raise ConfigError("data.root", cfg.root, f"could not read {cls}: {first_line(err)}") from err
    to_tensor = lambda d: torch.as_tensor(d.data).flatten(1)  # noqa: E731
    return to_tensor(train), torch.as_tensor(train.targets), to_tensor(test), torch.as_tensor(test.targets)


def _preprocess(x_train: torch.Tensor, x_test: torch.Tensor, how: str):
    """scale: x/255; center: x/255 - mean training image; standardize: (x/255 - m) / s (scalars)."""
    x_train, x_test = x_train.double(), x_test.double()
    if how == "none":
        return x_train, x_test
    x_train, x_test = x_train / 255.0, x_test / 255.0
    if how == "center":
        mean = x_train.mean(0, keepdim=True)
        return x_train - mean, x_test - mean
    if how == "standardize":
        mean, std = x_train.mean(), x_train.std()
        return (x_train - mean) / std, (x_test - mean) / std
    return x_train, x_test


def _torchvision_dataset(cfg: DictConfig) -> Dataset:
    x_tr, y_tr, x_te, y_te = _load_torchvision(cfg)
    x_tr, x_te = _preprocess(x_tr, x_te, cfg.preprocess)
    return Dataset(x_tr, y_tr, x_te, y_te, num_classes=10)


def _generated_file(cfg: DictConfig) -> Path:
    """Where scikit-learn's dataset for ``cfg`` is kept: one file per data config and scikit-learn version."""
    from importlib.metadata import version

    from omegaconf import OmegaConf

    stamp = repr((OmegaConf.to_container(cfg, resolve=True), version("scikit-learn")))
    return CACHE_DIR / "generated" / f"{cfg.name}-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.npz"


def _sklearn_dataset_kept(cfg: DictConfig) -> Dataset:
    """:func:`_sklearn_dataset`, kept on disk after the first time: importing scikit-learn (and the
    SciPy it imports) takes longer than a small run trains. An unreadable file is made again; an
    unwritable cache is skipped."""
    import numpy as np

    path = _generated_file(cfg)
    try:
        with np.load(path) as f:
            arrays = [torch.as_tensor(f[k]) for k in ("x_train", "y_train", "x_test", "y_test")]
            return Dataset(*arrays, int(f["num_classes"]))
    except (OSError, KeyError, ValueError):
        pass
    data = _sklearn_dataset(cfg)
    keep(path, lambda partial: np.savez(partial, x_train=data.x_train.numpy(), y_train=data.y_train.numpy(),
                                        x_test=data.x_test.numpy(), y_test=data.y_test.numpy(),
                                        num_classes=data.num_classes))
    return data


def load_dataset(cfg: DictConfig, device: torch.device, dtype: torch.dtype) -> Dataset:
    """Build the configured dataset and move it to ``device`` once, for the whole run."""
    if cfg.name in TORCHVISION_CLASSES:
        data = _torchvision_dataset(cfg)
    elif cfg.name == "lstsq":
        data = least_squares_problem(cfg)
    else:
        data = _sklearn_dataset_kept(cfg)
    if cfg.limit_train:
        data.x_train, data.y_train = data.x_train[: cfg.limit_train], data.y_train[: cfg.limit_train]
    return data.to(device, dtype)


# -------------------------------------------------------------------------- batches
class BatchSampler:
    """Endless mini-batches for K members: member k's are slices of a fresh random permutation
    of the training set each epoch, drawn from its own CPU generator seeded with ``seeds[k]``.

    So a member's batch order depends on its seed alone (not on the device, the other members or
    other random draws): a member sees exactly the batches of a separate run with its seed. The
    last, short slice of an epoch is dropped so every step sees ``batch_size`` examples;
    ``batch_size == n`` is full-batch gradient descent (no shuffling needed). The permutations
    live on the device as one ``(K, n)`` tensor; a step's indices are a ``(K, batch_size)`` slice.
    """

    def __init__(self, n: int, batch_size: int, seeds: list[int], device: torch.device):
        self.n, self.batch_size, self.device = n, batch_size, device
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.full_batch = batch_size >= n
        self._order = torch.arange(n, device=device).expand(len(seeds), n)
        self._pos = n  # forces new permutations on the first call

    def next_indices(self) -> torch.Tensor | None:
        """``(K, batch_size)`` indices of the next batches, or None for the whole training set."""
        if self.full_batch:
            return None
        if self._pos + self.batch_size > self.n:
            self._order = torch.stack([torch.randperm(self.n, generator=g) for g in self.generators]).to(self.device)
            self._pos = 0
        idx = self._order[:, self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return idx

    def member_state(self, k: int) -> dict:
        """Member ``k``'s sampler on its own: generator state, this epoch's order, position in it."""
        return {"generator": self.generators[k].get_state(), "order": self._order[k].cpu().clone(),
                "position": self._pos}

    def load_member_state(self, k: int, state: dict) -> None:
        """Slot ``k`` <- a member's sampler. Members of one population draw in lockstep, so they
        share a position: loading a member sets it (the population checks that its members'
        steps agree). Generator states stay on the CPU, whatever device the state was loaded to."""
        self.generators[k].set_state(state["generator"].cpu())
        order = self._order.clone()  # fresh: a broadcast view
        order[k] = state["order"].to(self.device)
        self._order, self._pos = order, state["position"]
