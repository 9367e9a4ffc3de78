"""Datasets: generated, shipped with scikit-learn, and torchvision's files found offline."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from initopt.config import ConfigError
from initopt.data import BatchSampler, load_dataset
from initopt.datafiles import expected_train_size

CPU = torch.device("cpu")


def data_cfg(**kw):
    base = {"name": "moons", "n_samples": 200, "noise": 0.1, "factor": 0.5, "test_fraction": 0.25,
            "root": "data", "download": False, "preprocess": "none", "limit_train": 0, "seed": 0}
    return OmegaConf.create({**base, **kw})


@pytest.mark.parametrize("name", ["moons", "circles", "digits"])
def test_offline_datasets_load_as_tensors_with_the_expected_sizes(name):
    cfg = data_cfg(name=name, preprocess="scale" if name == "digits" else "none")
    d = load_dataset(cfg, CPU, torch.float32)
    assert len(d.x_train) == expected_train_size(cfg)
    assert len(d.x_train) + len(d.x_test) == (1797 if name == "digits" else 200)
    assert d.x_train.dtype == torch.float32
    if name == "digits":
        assert (d.num_classes, d.n_outputs, d.y_train.dtype) == (10, 10, torch.long)
        assert d.x_train.max() <= 1.0
    else:
        assert (d.num_classes, d.n_outputs, d.y_train.dtype) == (2, 1, torch.float32)


def test_generated_data_depends_on_its_own_seed_only():
    a = load_dataset(data_cfg(seed=1), CPU, torch.float64)
    b = load_dataset(data_cfg(seed=1), CPU, torch.float64)
    c = load_dataset(data_cfg(seed=2), CPU, torch.float64)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)


def _write_idx(path, array: np.ndarray, gz: bool):
    """The MNIST file format: magic (0, 0, dtype 0x08, ndim), big-endian dims, uint8 data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def fake_mnist_dir(root, n_train=50, n_test=20, gz=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(root / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), gz)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_flat_mnist_format_files_are_read_through_torchvision(tmp_path, monkeypatch, gz):
    monkeypatch.setattr("initopt.data.CACHE_DIR", tmp_path / "cache")
    root = fake_mnist_dir(tmp_path / "flat", gz=gz)
    before = sorted(p.name for p in root.iterdir())
    d = load_dataset(data_cfg(name="fashion_mnist", root=str(root), preprocess="standardize"),
                     CPU, torch.float32)
    assert d.x_train.shape == (50, 784) and d.x_test.shape == (20, 784)
    assert d.x_train.mean().abs() < 1e-5 and (d.x_train.std() - 1).abs() < 1e-4
    assert sorted(p.name for p in root.iterdir()) == before  # the user's folder is untouched


def test_corrupt_files_are_a_one_line_data_root_error(tmp_path, monkeypatch):
    monkeypatch.setattr("initopt.data.CACHE_DIR", tmp_path / "cache")
    root = tmp_path / "bad"
    root.mkdir()
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (root / f).write_bytes(b"junk")
    with pytest.raises(ConfigError) as info:
        load_dataset(data_cfg(name="mnist", root=str(root)), CPU, torch.float32)
    assert info.value.key == "data.root" and "\n" not in str(info.value)


def test_missing_files_fail_at_once_saying_where_to_put_them(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_download(*args, **kwargs):  # nothing may be fetched or even attempted
        raise AssertionError("torchvision was asked to load or download")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_download)
    with pytest.raises(ConfigError) as info:
        load_dataset(data_cfg(name="mnist", root=str(tmp_path)), CPU, torch.float32)
    assert "MNIST/raw" in str(info.value) and "data.download=true" in str(info.value)


def test_limit_train_keeps_the_first_examples():
    full = load_dataset(data_cfg(), CPU, torch.float32)
    cut = load_dataset(data_cfg(limit_train=40), CPU, torch.float32)
    assert torch.equal(cut.x_train, full.x_train[:40]) and expected_train_size(data_cfg(limit_train=40)) == 40


def test_batches_cover_each_epoch_once_in_a_seeded_order():
    s1, s2 = BatchSampler(100, 25, seeds=[3], device=CPU), BatchSampler(100, 25, seeds=[3], device=CPU)
    epoch = torch.cat([s1.next_indices()[0] for _ in range(4)])
    assert sorted(epoch.tolist()) == list(range(100))
    assert torch.equal(epoch, torch.cat([s2.next_indices()[0] for _ in range(4)]))
    assert not torch.equal(epoch, torch.cat([s1.next_indices()[0] for _ in range(4)]))


def test_each_member_draws_the_batches_of_a_separate_sampler_with_its_seed():
    together = BatchSampler(100, 25, seeds=[3, 7], device=CPU)
    alone = [BatchSampler(100, 25, seeds=[s], device=CPU) for s in (3, 7)]
    for _ in range(9):
        both = together.next_indices()
        assert both.shape == (2, 25)
        for k, sampler in enumerate(alone):
            assert torch.equal(both[k], sampler.next_indices()[0])


def test_a_batch_as_large_as_the_data_is_full_batch_gradient_descent():
    assert BatchSampler(100, 100, seeds=[0], device=CPU).next_indices() is None


def test_generated_data_is_kept_and_read_back_equal_without_importing_scikit_learn(tmp_path):
    """The second load of a generated dataset reads the kept file: the same tensors, and a fresh
    process that loads it imports neither scikit-learn nor SciPy."""
    code = """
import sys, torch
from initopt.checks import compose_job
from initopt.data import load_dataset
data = load_dataset(compose_job(["data=circles", "data.n_samples=300"]).data, torch.device("cpu"), torch.float64)
torch.save([data.x_train, data.y_train, data.x_test, data.y_test], sys.argv[1])
print(sorted(m for m in ("sklearn", "scipy") if m in sys.modules))
"""
    env = {**os.environ, "INITOPT_CACHE": str(tmp_path / "cache")}
    first, second = (subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], env=env,
                                    capture_output=True, text=True) for name in ("a.pt", "b.pt"))
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    assert first.stdout.strip() == "['scipy', 'sklearn']" and second.stdout.strip() == "[]"
    a, b = torch.load(tmp_path / "a.pt"), torch.load(tmp_path / "b.pt")
    assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b))
