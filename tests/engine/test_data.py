"""Datasets and loaders: real digits and Fashion-MNIST from disk, synthetic idx/pickle/PNG folders
built in tmp_path for the other layouts. Nothing is downloaded."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler

from fbt_engine.config import AugConfig, DataConfig
from fbt_engine.data import (DATASETS, FASHION_DEBIAN_DIR, ArrayDataset, DatasetInfo, build_datasets,
                             build_loaders, build_mixup, build_transforms, digits_split, read_idx,
                             subset_indices)
from fbt_engine.errors import DataError

AUG = AugConfig()


# --- helpers -------------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray) -> None:
    """Minimal idx writer: magic (0, 0, 0x08 = ubyte, ndim), big-endian int32 dims, raw bytes."""
    payload = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload += array.astype(np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_fashion(folder: Path, n_train: int = 12, n_val: int = 6, gz: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_val)):
        write_idx(folder / f"{split}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte{ext}", np.arange(n) % 10)


def write_cifar100(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """A tiny cifar-100-python folder; every image is pure red so the channel order is checkable."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    red = np.concatenate([np.full(1024, 255), np.zeros(2048)]).astype(np.uint8)  # R plane, G, B
    for split, n in (("train", n_train), ("test", n_val)):
        d = {"data": np.tile(red, (n, 1)), "fine_labels": [i % 100 for i in range(n)]}
        (folder / split).write_bytes(pickle.dumps(d))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(100)]}))
    return folder


def fashion_cfg(root: Path | str, **kw) -> DataConfig:
    return DataConfig(name="fashion_mnist", root=str(root), img_size=32, **kw)


@pytest.fixture(scope="module")
def digits():
    return build_datasets(DataConfig(img_size=32), AUG, seed=0)


# --- registry, digits ----------------------------------------------------------------------------

def test_registry_has_all_datasets():
    assert set(DATASETS) == {"digits", "fashion_mnist", "cifar100", "imagefolder"}


def test_unknown_dataset_is_a_data_error():
    with pytest.raises(DataError, match="unknown dataset"):
        build_datasets(DataConfig(name="mnistt"), AUG, seed=0)


def test_digits_shapes_dtype_and_labels(digits):
    train, val, info = digits
    assert isinstance(info, DatasetInfo)
    assert (info.name, info.num_classes, info.in_chans) == ("digits", 10, 3)
    assert (info.train_size, info.val_size) == (len(train), len(val)) == (1437, 360)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int)
    assert set(train.targets.tolist()) == set(range(10)) == set(val.targets.tolist())
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (32, 32)


def test_digits_split_is_stable_stratified_and_ignores_run_seed(digits):
    labels = digits[0].targets
    a, b = digits_split(np.arange(100) % 10, 0.2), digits_split(np.arange(100) % 10, 0.2)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert np.bincount(np.arange(100)[a[1]] % 10).tolist() == [2] * 10  # stratified
    other, _, _ = build_datasets(DataConfig(img_size=32), AUG, seed=1234)
    assert np.array_equal(other.targets, labels)
    assert np.array_equal(other.images, digits[0].images)


def test_digits_val_fraction_must_be_a_share():
    with pytest.raises(DataError, match="val_fraction"):
        build_datasets(DataConfig(val_fraction=1.5), AUG, seed=0)


# --- loaders, transforms, mixup --------------------------------------------------------------------

def test_loaders_give_normalised_batches():
    train, val, info = build_loaders(DataConfig(img_size=32), AUG, batch_size=64, seed=0)
    x, y = next(iter(train))
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(train) == 1437 // 64  # drop_last
    xs = torch.cat([b for b, _ in val])
    assert xs.shape == (360, 3, 32, 32)
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1


def test_train_shuffle_is_seeded():
    def first_labels(seed: int) -> list[int]:
        loader = build_loaders(DataConfig(img_size=16), AUG, batch_size=32, seed=seed)[0]
        return next(iter(loader))[1].tolist()
    assert first_labels(3) == first_labels(3)
    assert first_labels(3) != first_labels(4)


def test_tiny_subset_still_yields_a_batch():
    train, _, _ = build_loaders(DataConfig(img_size=16, train_subset=10), AUG, batch_size=64, seed=0)
    assert [len(y) for _, y in train] == [10]


def test_loader_options_for_workers_and_cuda():
    train, val, _ = build_loaders(DataConfig(img_size=16, num_workers=1), AUG, batch_size=8, seed=0,
                                  device_type="cuda")
    assert not train.persistent_workers and train.pin_memory and val.pin_memory  # exact resume: fresh worker seeds


def test_distributed_loaders(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        train, val, _ = build_loaders(DataConfig(img_size=16), AUG, batch_size=32, seed=0, distributed=True)
        assert isinstance(train.sampler, DistributedSampler)
        assert list(val.sampler) == list(range(360))
    finally:
        dist.destroy_process_group()


def test_preset_mean_std_override():
    _, _, info = build_datasets(DataConfig(img_size=16, mean=[0.5], std=[0.25, 0.25, 0.25]), AUG, seed=0)
    assert info.mean == (0.5,) * 3 and info.std == (0.25,) * 3
    with pytest.raises(DataError, match="data.mean"):
        build_datasets(DataConfig(img_size=16, mean=[0.1, 0.2]), AUG, seed=0)


def test_train_augmentations_build_and_run(digits):
    aug = AugConfig(scale_min=0.5, hflip=0.5, randaugment="rand-m9-mstd0.5-inc1", random_erasing=0.25)
    train_tf, val_tf = build_transforms(DataConfig(img_size=32), aug, (0.3,) * 3, (0.3,) * 3)
    img = Image.fromarray(digits[0].images[0]).convert("RGB")
    assert train_tf(img).shape == val_tf(img).shape == (3, 32, 32)


def test_randaugment_posterize_to_zero_bits_does_not_crash():
    # Pillow >= 13 rejects posterize(0); timm asks for it at magnitude 10.
    from timm.data.auto_augment import AugmentOp
    build_transforms(DataConfig(img_size=16), AugConfig(randaugment="rand-m10-inc1"), (0.5,) * 3, (0.5,) * 3)
    op = AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10, hparams={})
    out = op(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert out.getpixel((0, 0)) == (0, 0, 0)


def test_mixup_built_only_when_asked():
    assert build_mixup(AugConfig(), 10) is None
    mix = build_mixup(AugConfig(mixup=0.8, cutmix=1.0, label_smoothing=0.1), 10)
    assert mix is not None and mix.label_smoothing == 0.1
    x, y = mix(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]))
    assert x.shape == (4, 3, 16, 16) and y.shape == (4, 10)
    assert torch.allclose(y.sum(1), torch.ones(4))


# --- subsets ---------------------------------------------------------------------------------------

def test_subsets_have_the_asked_size_and_are_stable():
    cfg = DataConfig(img_size=16, train_subset=100, val_subset=50)
    train, val, info = build_datasets(cfg, AUG, seed=0)
    assert (len(train), len(val), info.train_size, info.val_size) == (100, 50, 100, 50)
    again, _, _ = build_datasets(cfg, AUG, seed=99)
    assert train.indices == again.indices
    assert subset_indices(10, 0) is None and subset_indices(10, 20) is None


# --- Fashion-MNIST ---------------------------------------------------------------------------------

@pytest.mark.skipif(not FASHION_DEBIAN_DIR.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_the_debian_folder():
    train, val, info = build_datasets(DataConfig(name="fashion_mnist", img_size=32), AUG, seed=0)
    assert (info.train_size, info.val_size, info.num_classes) == (60000, 10000, 10)
    assert info.class_names[0] == "T-shirt/top" and info.mean == (0.2860,) * 3
    x, y = val[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 10
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_fashion(tmp_path / "FashionMNIST" / "raw")
    train, val, info = build_datasets(fashion_cfg(tmp_path), AUG, seed=0)
    assert (len(train), len(val)) == (12, 6)
    assert train.targets.tolist() == [i % 10 for i in range(12)]
    assert train[3][0].shape == (3, 32, 32)


def test_fashion_mnist_gz_idx_files(tmp_path):
    write_fashion(tmp_path, gz=True)
    train, _, _ = build_datasets(fashion_cfg(tmp_path), AUG, seed=0)
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    assert raw.shape == (12, 28, 28) and np.array_equal(train.images, raw)


def test_fashion_mnist_missing_names_the_folders(tmp_path):
    with pytest.raises(DataError) as err:
        build_datasets(fashion_cfg(tmp_path), AUG, seed=0)
    assert str(tmp_path) in err.value.message
    assert str(tmp_path / "FashionMNIST" / "raw") in err.value.message
    assert "apt-get install dataset-fashion-mnist" in err.value.hint and "data.download" in err.value.hint


def test_read_idx_rejects_other_files(tmp_path):
    (tmp_path / "x").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "x")


# --- CIFAR-100, imagefolder -------------------------------------------------------------------------

def test_cifar100_from_a_pickle_folder(tmp_path):
    write_cifar100(tmp_path)
    cfg = DataConfig(name="cifar100", root=str(tmp_path), img_size=32, mean=[0.0], std=[1.0])
    train, val, info = build_datasets(cfg, AUG, seed=0)
    assert (len(train), len(val), info.num_classes, info.class_names[5]) == (8, 4, 100, "c5")
    x, y = val[1]
    assert y == 1 and torch.allclose(x.mean((1, 2)), torch.tensor([1.0, 0.0, 0.0]))  # red stays red


def test_cifar100_missing_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as err:
        build_datasets(DataConfig(name="cifar100", root=str(tmp_path)), AUG, seed=0)
    assert str(tmp_path / "cifar-100-python") in err.value.message and "data.download" in err.value.hint


def write_image_folder(root: Path, splits=("train", "val")) -> None:
    for split in splits:
        for c, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (20, 24), colour).save(root / split / c / f"{i}.png")


def test_imagefolder(tmp_path):
    write_image_folder(tmp_path)
    train, val, info = build_datasets(DataConfig(name="imagefolder", root=str(tmp_path), img_size=16), AUG, 0)
    assert info.class_names == ("cat", "dog") and (info.train_size, info.val_size) == (4, 4)
    x, y = val[3]
    assert x.shape == (3, 16, 16) and y == 1


def test_imagefolder_missing_val_is_a_data_error(tmp_path):
    write_image_folder(tmp_path, splits=("train",))
    with pytest.raises(DataError, match="val"):
        build_datasets(DataConfig(name="imagefolder", root=str(tmp_path)), AUG, seed=0)


def test_array_dataset_checks_lengths():
    with pytest.raises(DataError):
        ArrayDataset(np.zeros((3, 4, 4), np.uint8), np.zeros(2), transform=lambda im: im)
