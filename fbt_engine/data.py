"""Datasets, transforms and loaders.

A registry maps `data.name` to a builder returning `(train_ds, val_ds, DatasetInfo)`. Images are held
as uint8 arrays where the format allows (digits, Fashion-MNIST, CIFAR-100) and handed to timm's
transforms as RGB PIL images, so a preset's augmentation works the same on every dataset.
Splits and subsets use a fixed seed (0), not the run seed: every run sees the same images, so runs
with different seeds are comparable.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .config import AugConfig, DataConfig
from .errors import DataError

if TYPE_CHECKING:
    from timm.data import Mixup

SPLIT_SEED = 0  # splits and subsets never depend on the run seed
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Digits statistics: computed once from all 1,797 images scaled to [0, 1] and resized to 32x32
# (bilinear); upsampling smooths the 8x8 pixels, so the 8x8 std (0.376) would over-state it.
DIGITS_MEAN, DIGITS_STD = (0.3055,) * 3, (0.3235,) * 3
FASHION_MEAN, FASHION_STD = (0.2860,) * 3, (0.3530,) * 3
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
FASHION_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # package dataset-fashion-mnist
DOWNLOAD_DIR = Path.home() / ".cache" / "fbt-workbench" / "data"
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")

Transform = Callable[[Image.Image], torch.Tensor]
Builder = Callable[[DataConfig, AugConfig], "tuple[Dataset, Dataset, DatasetInfo]"]
DATASETS: dict[str, Builder] = {}


@dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the engine needs to know about a dataset, as plain data."""

    name: str
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    in_chans: int = 3
    train_size: int = 0
    val_size: int = 0
    class_names: tuple[str, ...] = ()


def register_dataset(name: str) -> Callable[[Builder], Builder]:
    """Decorator adding a builder `(data, aug) -> (train_ds, val_ds, info)` to DATASETS."""
    def add(fn: Builder) -> Builder:
        DATASETS[name] = fn
        return fn
    return add


class ArrayDataset(Dataset):
    """uint8 images (N, H, W) or (N, H, W, 3) with int labels; yields (transformed image, label)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Transform) -> None:
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels",
                            "the image and label files do not belong together")
        self.images = images
        self.targets = labels.astype(np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i])
        return self.transform(img.convert("RGB") if img.mode != "RGB" else img), int(self.targets[i])


# --- transforms and statistics ----------------------------------------------------------------

def _stats(values: list[float], default: tuple[float, ...], key: str) -> tuple[float, ...]:
    """A preset's mean/std (1 or 3 numbers) or the dataset's own."""
    if not values:
        return default
    if len(values) == 1:
        return (float(values[0]),) * 3
    if len(values) == 3:
        return tuple(float(v) for v in values)
    raise DataError(f"`data.{key}` has {len(values)} numbers", "give 1 (grey) or 3 (RGB) numbers, or none")


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize, also for 0 bits (a black image, as older Pillow gave): Pillow >= 13
    raises on 0, which RandAugment's PosterizeIncreasing asks for at magnitude 10."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return ImageOps.posterize(img, bits_to_keep)


def _patch_timm_posterize() -> None:
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if auto_augment.NAME_TO_OP.get(name) is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize


def build_transforms(data: DataConfig, aug: AugConfig, mean: tuple[float, ...],
                     std: tuple[float, ...]) -> tuple[Transform, Transform]:
    """timm train/val transforms as the preset says (no colour jitter: the preset has no knob)."""
    from timm.data import create_transform  # timm import is slow; only data users pay for it

    if aug.randaugment:
        _patch_timm_posterize()
    plain = aug.scale_min >= 1.0
    train = create_transform(
        input_size=data.img_size, is_training=True, scale=(aug.scale_min, 1.0),
        ratio=(1.0, 1.0) if plain else (3 / 4, 4 / 3), hflip=aug.hflip, color_jitter=None,
        auto_augment=aug.randaugment or None, re_prob=aug.random_erasing, mean=mean, std=std,
        interpolation="bilinear")
    val = create_transform(input_size=data.img_size, is_training=False, crop_pct=1.0, mean=mean,
                           std=std, interpolation="bilinear")
    return train, val


def _resolve(data: DataConfig, aug: AugConfig, mean: tuple[float, ...], std: tuple[float, ...]
             ) -> tuple[Transform, Transform, tuple[float, ...], tuple[float, ...]]:
    mean, std = _stats(data.mean, mean, "mean"), _stats(data.std, std, "std")
    return *build_transforms(data, aug, mean, std), mean, std


# --- digits (scikit-learn, bundled) --------------------------------------------------------------

def digits_split(labels: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/val indices with the fixed SPLIT_SEED: the same on every run."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"`data.val_fraction` is {val_fraction}", "use a share between 0 and 1, e.g. 0.2")
    idx = np.arange(len(labels))
    train, val = train_test_split(idx, test_size=val_fraction, stratify=labels, random_state=SPLIT_SEED)
    return np.sort(train), np.sort(val)


def _resize_all(images: np.ndarray, size: int) -> np.ndarray:
    """Resize once up front, so RandAugment's pixel offsets act on the training resolution."""
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                     for im in images])


@register_dataset("digits")
def build_digits(data: DataConfig, aug: AugConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    """scikit-learn's 1,797 8x8 digits (values 0..16), scaled to uint8 and resized to img_size."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = _resize_all(np.round(raw.images * (255 / 16)).astype(np.uint8), data.img_size)
    labels = raw.target.astype(np.int64)
    tr, va = digits_split(labels, data.val_fraction)
    train_tf, val_tf, mean, std = _resolve(data, aug, DIGITS_MEAN, DIGITS_STD)
    info = DatasetInfo("digits", 10, mean, std, 3, len(tr), len(va), tuple(str(d) for d in range(10)))
    return ArrayDataset(images[tr], labels[tr], train_tf), ArrayDataset(images[va], labels[va], val_tf), info


# --- Fashion-MNIST (idx files) -------------------------------------------------------------------

def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (raw or .gz) of unsigned bytes into a uint8 array of its stated shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        buf = f.read()
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes",
                        "re-download it or point data.root at the original idx files")
    ndim = buf[3]
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">i4", count=ndim, offset=4))
    count = int(np.prod(shape))
    if len(buf) < 4 + 4 * ndim + count:
        raise DataError(f"{path} is truncated", "re-download it")
    return np.frombuffer(buf, dtype=np.uint8, count=count, offset=4 + 4 * ndim).reshape(shape)


IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "val_images": "t10k-images-idx3-ubyte", "val_labels": "t10k-labels-idx1-ubyte"}


def _find_idx(folder: Path) -> dict[str, Path] | None:
    """The four idx files in `folder` (each raw or .gz), or None if any is missing."""
    found = {}
    for key, stem in IDX_FILES.items():
        hits = [folder / n for n in (stem, stem + ".gz") if (folder / n).is_file()]
        if not hits:
            return None
        found[key] = hits[0]
    return found


def fashion_folders(root: str) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: data.root (or the Debian folder), then the
    torchvision layout below it."""
    base = Path(root).expanduser() if root else FASHION_DEBIAN_DIR
    return [base, base / "FashionMNIST" / "raw"]


def _download_torchvision(cls_name: str, root: Path, **kw: Any) -> None:
    """Fetch a dataset with torchvision (online users only); failures become a DataError."""
    import torchvision.datasets as tvd

    try:
        for train in (True, False):
            getattr(tvd, cls_name)(str(root), train=train, download=True, **kw)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise DataError(f"downloading {cls_name} into {root} failed: {exc}",
                        "check the network, or fetch the files yourself and set data.root") from None


def _root_after_download(data: DataConfig, cls_name: str) -> str:
    """data.root (or the download cache when downloading), after torchvision fetched `cls_name` if asked."""
    root = data.root or (str(DOWNLOAD_DIR) if data.download else "")
    if data.download:
        _download_torchvision(cls_name, Path(root).expanduser())
    return root


def fashion_files(root: str) -> dict[str, Path]:
    """The four idx files, or a DataError naming where they were looked for."""
    folders = fashion_folders(root)
    files = next((f for f in map(_find_idx, folders) if f), None)
    if files is None:
        raise DataError(
            f"Fashion-MNIST idx files ({', '.join(IDX_FILES.values())}, raw or .gz) were not found in "
            + " or ".join(str(f) for f in folders),
            "install them with `apt-get install dataset-fashion-mnist`, or set data.root to a folder "
            "holding them, or set data.download = true (online)")
    return files


@register_dataset("fashion_mnist")
def build_fashion_mnist(data: DataConfig, aug: AugConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Fashion-MNIST from idx files: 60,000 train and 10,000 test 28x28 grey images."""
    files = fashion_files(_root_after_download(data, "FashionMNIST"))
    arrays = {k: read_idx(p) for k, p in files.items()}
    train_tf, val_tf, mean, std = _resolve(data, aug, FASHION_MEAN, FASHION_STD)
    train = ArrayDataset(arrays["train_images"], arrays["train_labels"], train_tf)
    val = ArrayDataset(arrays["val_images"], arrays["val_labels"], val_tf)
    info = DatasetInfo("fashion_mnist", 10, mean, std, 3, len(train), len(val), FASHION_CLASSES)
    return train, val, info


# --- CIFAR-100 (python pickle folder) ------------------------------------------------------------

def cifar100_folders(root: str) -> list[Path]:
    """Candidate `cifar-100-python` folders: below data.root (or ./data and the download cache)."""
    bases = [Path(root).expanduser()] if root else [Path("data"), DOWNLOAD_DIR]
    return [p for b in bases for p in (b / "cifar-100-python", b)]


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's pickles hold dicts, lists, bytes and numpy arrays; any other global (a function a
    crafted file would call) is refused, so a downloaded data file never runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data file")


def _unpickle(path: Path, keys: tuple[str, ...] = ("data", "fine_labels")) -> dict[str, Any]:
    """One CIFAR pickle, read with `_ArraysOnly`, as a dict holding `keys`; anything else is a DataError."""
    hint = "download the python version of CIFAR-100 again (data.download = true)"
    try:
        with open(path, "rb") as f:
            d = _ArraysOnly(f, encoding="latin1").load()
    except Exception as exc:  # noqa: BLE001 - a damaged pickle fails in many ways (overflow, codec, memory)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"CIFAR-100 file {str(path)!r} is damaged or holds more than data ({first})", hint) from None
    d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()} if isinstance(d, dict) else d
    if not isinstance(d, dict) or any(k not in d for k in keys):
        raise DataError(f"CIFAR-100 file {str(path)!r} is not a CIFAR-100 pickle (it has no {', '.join(keys)})", hint)
    return d


def _cifar_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and fine labels of one pickle file."""
    d = _unpickle(folder / split, ("data", "fine_labels"))
    try:
        images = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(d["fine_labels"], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"CIFAR-100 file {str(folder / split)!r} holds malformed arrays ({exc})",
                        "download the python version of CIFAR-100 again (data.download = true)") from None
    return np.ascontiguousarray(images), labels


def cifar100_folder(root: str) -> Path:
    """The `cifar-100-python` folder, or a DataError naming where it was looked for."""
    folders = cifar100_folders(root)
    folder = next((f for f in folders if all((f / n).is_file() for n in ("train", "test", "meta"))), None)
    if folder is None:
        raise DataError(
            "CIFAR-100 (cifar-100-python/ with train, test and meta) was not found in "
            + " or ".join(str(f) for f in folders),
            "unpack cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and set "
            "data.root to the folder holding cifar-100-python/, or set data.download = true (online)")
    return folder


@register_dataset("cifar100")
def build_cifar100(data: DataConfig, aug: AugConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    """CIFAR-100 from the standard python folder (train, test, meta pickles)."""
    folder = cifar100_folder(_root_after_download(data, "CIFAR100"))
    (xtr, ytr), (xva, yva) = _cifar_split(folder, "train"), _cifar_split(folder, "test")
    names = tuple(_unpickle(folder / "meta", ("fine_label_names",))["fine_label_names"])
    train_tf, val_tf, mean, std = _resolve(data, aug, CIFAR100_MEAN, CIFAR100_STD)
    info = DatasetInfo("cifar100", len(names), mean, std, 3, len(xtr), len(xva), names)
    return ArrayDataset(xtr, ytr, train_tf), ArrayDataset(xva, yva, val_tf), info


# --- ImageNet-style folders ----------------------------------------------------------------------

def imagefolder_root(root_text: str) -> Path:
    """data.root when it holds train/ and val/, or a DataError naming what is missing."""
    root = Path(root_text).expanduser()
    missing = [str(root / s) for s in ("train", "val") if not (root / s).is_dir()]
    if not root_text or missing:
        raise DataError(f"imagefolder needs class folders in {' and '.join(missing) or 'data.root'}",
                        "set data.root to a folder holding train/<class>/ and val/<class>/ images")
    return root


def locate(data: DataConfig) -> str:
    """Where the data set's files are, without reading them (preflight: a missing folder is reported
    before a run folder exists or a teacher trains). A DataError names the folders looked in."""
    if data.name == "digits":
        return "scikit-learn's bundled digits"
    if data.download:
        return f"{data.name}: downloaded into {data.root or DOWNLOAD_DIR} when the run starts"
    if data.name == "fashion_mnist":
        return f"Fashion-MNIST idx files in {fashion_files(data.root)['train_images'].parent}"
    if data.name == "cifar100":
        return f"CIFAR-100 in {cifar100_folder(data.root)}"
    if data.name == "imagefolder":
        return f"class folders in {imagefolder_root(data.root)}/train and /val"
    return f"{data.name}: read when the run starts"


@register_dataset("imagefolder")
def build_imagefolder(data: DataConfig, aug: AugConfig) -> tuple[Dataset, Dataset, DatasetInfo]:
    """`root/train/<class>/*` and `root/val/<class>/*` through torchvision's ImageFolder."""
    from torchvision.datasets import ImageFolder

    root = imagefolder_root(data.root)
    train_tf, val_tf, mean, std = _resolve(data, aug, IMAGENET_MEAN, IMAGENET_STD)
    try:
        train, val = ImageFolder(str(root / "train"), train_tf), ImageFolder(str(root / "val"), val_tf)
    except FileNotFoundError as exc:
        raise DataError(f"imagefolder: {exc}", "put images (.png, .jpg, ...) in each class folder") from None
    if val.classes != train.classes:
        raise DataError(f"{root / 'val'} has other class folders than {root / 'train'}",
                        "give val/ exactly the class folders of train/")
    info = DatasetInfo("imagefolder", len(train.classes), mean, std, 3, len(train), len(val),
                       tuple(train.classes))
    return train, val, info


# --- public entry points -------------------------------------------------------------------------

def subset_indices(n: int, size: int) -> np.ndarray | None:
    """Sorted indices of a stable random subset of `size` out of `n` (None: keep all)."""
    if size <= 0 or size >= n:
        return None
    return np.sort(np.random.default_rng(SPLIT_SEED).permutation(n)[:size])


def _subset(ds: Dataset, size: int) -> Dataset:
    idx = subset_indices(len(ds), size)
    return ds if idx is None else Subset(ds, idx.tolist())


def build_datasets(data: DataConfig, aug: AugConfig, seed: int = 0) -> tuple[Dataset, Dataset, DatasetInfo]:
    """Build the train and val datasets of `data.name` with their transforms.

    `seed` is the run seed. It is deliberately not used: splits and subsets always use SPLIT_SEED
    so that runs with different seeds train and evaluate on the same images.
    """
    if data.name not in DATASETS:
        raise DataError(f"unknown dataset {data.name!r}", f"use one of: {', '.join(DATASETS)}")
    train, val, info = DATASETS[data.name](data, aug)
    train, val = _subset(train, data.train_subset), _subset(val, data.val_subset)
    return train, val, replace(info, train_size=len(train), val_size=len(val))


def _shard(n: int) -> list[int]:
    """This rank's share of the val set, without the padding DistributedSampler adds, so
    summed correct/total counts over ranks give the exact accuracy."""
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return list(range(rank, n, world))


def build_loaders(data: DataConfig, aug: AugConfig, batch_size: int, seed: int,
                  distributed: bool = False, device_type: str = "cpu"
                  ) -> tuple[DataLoader, DataLoader, DatasetInfo]:
    """Train loader (seeded shuffle, full batches only) and val loader (in order); see make_loaders."""
    train, val, info = build_datasets(data, aug, seed)
    return (*make_loaders(train, val, data.num_workers, batch_size, seed, distributed, device_type), info)


class Indexed(Dataset):
    """Yields (image, label, index): for methods that keep per-sample state (CRD's memory bank)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, int, int]:
        x, y = self.dataset[i]
        return x, y, i


def dataset_labels(ds: Dataset) -> torch.Tensor:
    """Every sample's label in index order, read from the dataset's label array (no image is loaded)."""
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    targets = getattr(ds, "targets", None)
    if targets is None:
        raise DataError(f"{type(ds).__name__} exposes no `targets`", "this method needs each sample's label up front")
    return torch.as_tensor(np.asarray(targets), dtype=torch.long)


def make_loaders(train: Dataset, val: Dataset, num_workers: int, batch_size: int, seed: int,
                 distributed: bool = False, device_type: str = "cpu",
                 with_index: bool = False) -> tuple[DataLoader, DataLoader]:
    """Loaders over built datasets (each phase of a run gets fresh ones, seeded alike).

    The train loader's order is the same for every world size: a DistributedSampler (world 1
    when not `distributed`) shuffles all samples by `seed + epoch`, and rank r of W takes every
    W-th of them, so the ranks' batch k together are exactly the 1-process batch k of W times the
    size (docs/distributed.md). Call `loader.sampler.set_epoch(epoch)` each epoch. The workers'
    seeds draw from `loader.generator` (seeded `seed + rank`), whose state a checkpoint saves for
    an exact resume. Workers are not persistent: a persistent worker keeps the seed drawn when the
    process started, so a resumed run would augment differently.
    """
    if with_index:
        train = Indexed(train)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)
    common = dict(batch_size=batch_size, num_workers=num_workers, pin_memory=device_type == "cuda")
    drop_last = len(train) >= batch_size * world  # never an empty epoch on a tiny subset
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
    gen = torch.Generator().manual_seed(seed + rank)
    val_sampler = _shard(len(val)) if distributed else None
    return (DataLoader(train, sampler=sampler, generator=gen, drop_last=drop_last, **common),
            DataLoader(val, sampler=val_sampler, shuffle=False, **common))


def build_mixup(aug: AugConfig, num_classes: int) -> Mixup | None:
    """timm Mixup/CutMix (which then also applies label smoothing), or None when both are off."""
    if aug.mixup <= 0 and aug.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix,
                 label_smoothing=aug.label_smoothing, num_classes=num_classes)


__all__ = ["DATASETS", "DatasetInfo", "ArrayDataset", "register_dataset", "build_datasets",
           "build_loaders", "make_loaders", "Indexed", "dataset_labels", "build_mixup", "build_transforms", "read_idx", "digits_split",
           "subset_indices", "fashion_folders", "cifar100_folders"]
