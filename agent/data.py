"""Datasets for evaluation and int8 calibration: digits (built in), an image folder, or synthetic noise.

Every loader returns arrays already resized and normalised to the model's ``input_size`` (C, H, W),
float32 NCHW, with an evaluation set and a disjoint calibration set. numpy only at module level;
scikit-learn and PIL are imported where they are used.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from fleetbench.shared.errors import StageError
from fleetbench.shared.sweep import DatasetSpec

log = logging.getLogger(__name__)

DIGITS_SPLIT_SEED = 0          # the one split shared by examples/digits/train.py and evaluation
DIGITS_TEST_FRACTION = 0.3
SYNTHETIC_DEFAULT_N = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


@dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    eval_x: np.ndarray             # float32 NCHW, resized and normalised to the model's input_size
    eval_y: Optional[np.ndarray]   # int64 labels; None for synthetic data
    calib_x: np.ndarray            # float32 NCHW, disjoint from eval_x (int8 calibration)
    classes: Optional[list[str]]
    notes: tuple[str, ...] = ()    # for the result rows (a limit above the dataset's size)


def load_dataset(spec: DatasetSpec, input_size: Sequence[int], *,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> Dataset:
    """The dataset `spec` names, shaped for a model taking `input_size` (C, H, W).

    `mean`/`std` override the image-folder normalisation (default: ImageNet for 3 channels, 0.5/0.5
    otherwise). Digits and synthetic data ignore them.
    """
    size = _check_size(input_size)
    if spec.kind == "digits":
        return _load_digits(spec, size)
    if spec.kind == "synthetic":
        return _load_synthetic(spec, size)
    if spec.kind == "imagefolder":
        return _load_imagefolder(spec, size, mean, std)
    raise StageError("load", f"unknown dataset kind {spec.kind!r}")


def _check_size(input_size: Sequence[int]) -> tuple[int, int, int]:
    size = tuple(int(v) for v in input_size)
    if len(size) != 3 or min(size) <= 0:
        raise StageError("load", f"input_size must be three positive integers (C, H, W), got {list(input_size)}")
    return size[0], size[1], size[2]


# ---- digits -------------------------------------------------------------------------------------

def digits_split(seed: int = DIGITS_SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) into ``sklearn.datasets.load_digits()``: a fixed stratified 70/30 split.

    Training (examples/digits/train.py) and evaluation both use this, so the held-out set never
    overlaps what the demo model was trained on.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train_idx, test_idx = train_test_split(np.arange(len(target)), test_size=DIGITS_TEST_FRACTION,
                                           stratify=target, random_state=seed)
    return train_idx.astype(np.int64), test_idx.astype(np.int64)


def preprocess_digits(images_8x8: np.ndarray, input_size: Sequence[int]) -> np.ndarray:
    """Digits images (N, 8, 8) or (N, 64), values 0..16 -> float32 (N, C, H, W) in [-1, 1].

    pixel/16, bilinear resize (half-pixel centres, as torch's ``interpolate(align_corners=False)``),
    replicated to C channels, then (x - 0.5) / 0.5.
    """
    c, h, w = _check_size(input_size)
    x = np.asarray(images_8x8, dtype=np.float32).reshape(-1, 8, 8) / 16.0
    x = resize_bilinear(x, h, w)
    x = (x - 0.5) / 0.5
    return np.ascontiguousarray(np.repeat(x[:, None], c, axis=1), dtype=np.float32)


def resize_bilinear(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of (N, h, w) arrays to (N, height, width), align_corners=False semantics."""
    ry = _interp_matrix(images.shape[1], height)
    rx = _interp_matrix(images.shape[2], width)
    return np.einsum("yi,nij,xj->nyx", ry, images.astype(np.float32), rx, optimize=True).astype(np.float32)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1.0 - frac)
    np.add.at(m, (rows, hi), frac)
    return m.astype(np.float32)


def _load_digits(spec: DatasetSpec, size: tuple[int, int, int]) -> Dataset:
    from sklearn.datasets import load_digits

    digits = load_digits()
    train_idx, test_idx = digits_split()
    eval_idx = test_idx[: spec.limit] if spec.limit else test_idx
    note = limit_note(spec, len(test_idx))
    rng = np.random.default_rng(spec.seed)
    calib_idx = rng.permutation(train_idx)[: spec.calibration]
    return Dataset(
        name="digits",
        eval_x=preprocess_digits(digits.images[eval_idx], size),
        eval_y=digits.target[eval_idx].astype(np.int64),
        calib_x=preprocess_digits(digits.images[calib_idx], size),
        classes=[str(i) for i in range(10)],
        notes=(note,) if note else (),
    )


# ---- synthetic ----------------------------------------------------------------------------------

def _load_synthetic(spec: DatasetSpec, size: tuple[int, int, int]) -> Dataset:
    eval_seq, calib_seq = np.random.SeedSequence(spec.seed).spawn(2)
    n = spec.limit or SYNTHETIC_DEFAULT_N
    return Dataset(
        name="synthetic",
        eval_x=np.random.default_rng(eval_seq).standard_normal((n, *size), dtype=np.float32),
        eval_y=None,
        calib_x=np.random.default_rng(calib_seq).standard_normal((spec.calibration, *size), dtype=np.float32),
        classes=None,
    )


# ---- image folder -------------------------------------------------------------------------------

def _load_imagefolder(spec: DatasetSpec, size: tuple[int, int, int],
                      mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> Dataset:
    c = size[0]
    if c not in (1, 3):
        raise StageError("load", f"{spec.path}: image folders need 1 or 3 input channels, model takes {c}")
    classes, files = scan_imagefolder(spec.path)
    order = np.random.default_rng(spec.seed).permutation(len(files))
    files = [files[i] for i in order]
    n_calib = calibration_count(spec, len(files))
    if n_calib < spec.calibration:
        log.warning("%s: %d images, fewer than calibration=%d + 1; using %d for calibration",
                    spec.path, len(files), spec.calibration, n_calib)
    calib, rest = files[:n_calib], files[n_calib:]
    note = limit_note(spec, len(rest))
    if spec.limit:
        rest = rest[: spec.limit]
    mean_, std_ = _norm_stats(c, mean, std)
    return Dataset(
        name=f"imagefolder:{Path(spec.path or '').name}",   # scan_imagefolder refused a missing path
        eval_x=_read_images([f for f, _ in rest], size, mean_, std_),
        eval_y=np.array([y for _, y in rest], dtype=np.int64),
        calib_x=_read_images([f for f, _ in calib], size, mean_, std_),
        classes=classes,
        notes=(note,) if note else (),
    )


def calibration_count(spec: DatasetSpec, images: int) -> int:
    """Images of an image folder set aside for calibration: `calibration`, or half when there are too few."""
    return spec.calibration if spec.calibration < images else images // 2


def eval_size(spec: DatasetSpec) -> Optional[int]:
    """Images in the dataset's evaluation split before `limit` (None for synthetic data: `limit` is its size)."""
    if spec.kind == "digits":
        return len(digits_split()[1])
    if spec.kind == "imagefolder":
        images = len(scan_imagefolder(spec.path)[1])
        return images - calibration_count(spec, images)
    return None


def limit_note(spec: DatasetSpec, available: Optional[int]) -> Optional[str]:
    """What a `limit` above the evaluation split's size means: "dataset.limit 10000 > 540 images: using 540"."""
    if spec.limit is None or available is None or spec.limit <= available:
        return None
    return f"dataset.limit {spec.limit} > {available} images: using {available}"


def scan_imagefolder(path: Optional[str]) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, class id)]) of a folder with one sub-folder per class (sorted names = ids)."""
    root = Path(path or "")
    if not path or not root.is_dir():
        raise StageError("load", f"{path}: image folder not found")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise StageError("load", f"{path}: no class sub-folders (expected <path>/<class>/<image>)")
    files = [(f, i) for i, name in enumerate(classes) for f in sorted((root / name).rglob("*"))
             if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
    if len(files) < 2:
        raise StageError("load", f"{path}: found {len(files)} images in {len(classes)} class folders; "
                                 f"need at least 2 ({', '.join(sorted(IMAGE_SUFFIXES))})")
    found = sorted({classes[y] for _, y in files})
    if len(found) < 2:
        raise StageError("load", f"{path}: images in {len(found)} class folder ({found[0]!r}) of {len(classes)}; "
                                 "accuracy and F1 need images of at least 2 classes")
    return classes, files


def _norm_stats(c: int, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> tuple[np.ndarray, np.ndarray]:
    default_mean, default_std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ((0.5,), (0.5,))
    m = np.asarray(mean if mean is not None else default_mean, dtype=np.float32).reshape(-1)
    s = np.asarray(std if std is not None else default_std, dtype=np.float32).reshape(-1)
    if m.size not in (1, c) or s.size not in (1, c) or np.any(s <= 0):
        raise StageError("load", f"mean/std must have 1 or {c} values and std > 0")
    return np.broadcast_to(m, (c,)).reshape(c, 1, 1), np.broadcast_to(s, (c,)).reshape(c, 1, 1)


def _read_images(files: list[Path], size: tuple[int, int, int], mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    from PIL import Image

    c, h, w = size
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB" if c == 3 else "L").resize((w, h), Image.Resampling.BILINEAR)
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (OSError, ValueError) as e:
            raise StageError("load", f"{f}: cannot read image ({e})") from e
        arr = arr.reshape(h, w, c).transpose(2, 0, 1)
        out[i] = (arr - mean) / std
    return out
