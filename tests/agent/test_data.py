"""Tests of agent.data: the digits split, preprocessing, synthetic data and image folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fleetbench.agent.data import Dataset, digits_split, load_dataset, preprocess_digits, resize_bilinear
from fleetbench.shared.errors import StageError
from fleetbench.shared.sweep import DatasetSpec, load_sweep

REPO = Path(__file__).resolve().parents[2]
DIGITS_DIR = REPO / "examples" / "digits"


# ---- digits -------------------------------------------------------------------------------------

def test_digits_split_is_deterministic_stratified_and_disjoint():
    train_a, test_a = digits_split()
    train_b, test_b = digits_split()
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(test_a, test_b)
    assert train_a.dtype == test_a.dtype == np.int64
    assert not set(train_a) & set(test_a)
    assert len(train_a) + len(test_a) == 1797
    assert len(test_a) == 540
    from sklearn.datasets import load_digits
    counts = np.bincount(load_digits().target[test_a], minlength=10)
    assert counts.min() >= 50 and counts.max() <= 56      # stratified: about 54 per class


def test_digits_eval_is_test_split_and_calibration_comes_from_train():
    from sklearn.datasets import load_digits
    digits = load_digits()
    train_idx, test_idx = digits_split()
    ds = load_dataset(DatasetSpec(kind="digits", calibration=32), (1, 8, 8))
    assert isinstance(ds, Dataset)
    assert ds.name == "digits"
    assert ds.classes == [str(i) for i in range(10)]
    np.testing.assert_array_equal(ds.eval_y, digits.target[test_idx])
    # at 8x8 with one channel, preprocessing is just (x/16 - 0.5) / 0.5: rows can be matched exactly
    def flat(a):
        return {tuple(np.round(r.ravel(), 5)) for r in a}
    train_rows = flat(preprocess_digits(digits.images[train_idx], (1, 8, 8)))
    np.testing.assert_array_equal(ds.eval_x, preprocess_digits(digits.images[test_idx], (1, 8, 8)))
    assert flat(ds.calib_x) <= train_rows                   # every calibration image is a training image
    assert len(ds.calib_x) == 32


def test_digits_calibration_follows_seed_and_eval_does_not():
    ds_a = load_dataset(DatasetSpec(kind="digits", calibration=100, seed=3), (3, 16, 16))
    ds_b = load_dataset(DatasetSpec(kind="digits", calibration=100, seed=3), (3, 16, 16))
    np.testing.assert_array_equal(ds_a.calib_x, ds_b.calib_x)            # deterministic per seed
    np.testing.assert_array_equal(ds_a.eval_x, ds_b.eval_x)
    ds_c = load_dataset(DatasetSpec(kind="digits", calibration=100, seed=4), (3, 16, 16))
    np.testing.assert_array_equal(ds_a.eval_x, ds_c.eval_x)              # the eval split never moves
    assert not np.array_equal(ds_a.calib_x, ds_c.calib_x)                 # calibration draw follows seed


@pytest.mark.parametrize("size", [(3, 32, 32), (1, 28, 28), (3, 224, 224), (1, 8, 8), (3, 17, 9)])
def test_digits_shapes_and_dtypes(size):
    ds = load_dataset(DatasetSpec(kind="digits", limit=20, calibration=8), size)
    assert ds.eval_x.shape == (20, *size) and ds.eval_x.dtype == np.float32
    assert ds.calib_x.shape == (8, *size) and ds.calib_x.dtype == np.float32
    assert ds.eval_y.shape == (20,) and ds.eval_y.dtype == np.int64
    assert ds.eval_x.flags.c_contiguous
    assert -1.0 - 1e-6 <= ds.eval_x.min() and ds.eval_x.max() <= 1.0 + 1e-6
    if size[0] == 3:                                    # grey digits replicated to every channel
        np.testing.assert_array_equal(ds.eval_x[:, 0], ds.eval_x[:, 2])


def test_digits_limit_takes_a_deterministic_prefix():
    full = load_dataset(DatasetSpec(kind="digits"), (1, 8, 8))
    small = load_dataset(DatasetSpec(kind="digits", limit=50), (1, 8, 8))
    assert len(full.eval_x) == 540 and len(small.eval_x) == 50
    np.testing.assert_array_equal(small.eval_x, full.eval_x[:50])
    np.testing.assert_array_equal(small.eval_y, full.eval_y[:50])
    big = load_dataset(DatasetSpec(kind="digits", limit=10_000), (1, 8, 8))
    assert len(big.eval_x) == 540


def test_preprocess_digits_matches_torch_bilinear():
    torch = pytest.importorskip("torch")
    from sklearn.datasets import load_digits
    images = load_digits().images[:16]
    ours = preprocess_digits(images, (3, 32, 32))
    ref = torch.nn.functional.interpolate(torch.from_numpy(images / 16.0).float()[:, None], size=(32, 32),
                                          mode="bilinear", align_corners=False)
    ref = ((ref - 0.5) / 0.5).repeat(1, 3, 1, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    assert preprocess_digits(images.reshape(16, 64), (3, 32, 32)).shape == (16, 3, 32, 32)


def test_resize_bilinear_identity_and_constant():
    x = np.random.default_rng(0).random((2, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(resize_bilinear(x, 5, 7), x, atol=1e-6)
    const = np.full((1, 4, 4), 0.25, np.float32)
    np.testing.assert_allclose(resize_bilinear(const, 13, 3), 0.25, atol=1e-6)


# ---- synthetic ----------------------------------------------------------------------------------

def test_synthetic_shapes_labels_and_seeds():
    ds = load_dataset(DatasetSpec(kind="synthetic"), (3, 64, 48))
    assert ds.eval_y is None and ds.classes is None
    assert ds.eval_x.shape == (64, 3, 64, 48) and ds.eval_x.dtype == np.float32
    assert ds.calib_x.shape == (64, 3, 64, 48) and ds.calib_x.dtype == np.float32
    assert not np.array_equal(ds.eval_x, ds.calib_x)
    ds2 = load_dataset(DatasetSpec(kind="synthetic", limit=10, calibration=5), (1, 8, 8))
    assert ds2.eval_x.shape == (10, 1, 8, 8) and ds2.calib_x.shape == (5, 1, 8, 8)
    again = load_dataset(DatasetSpec(kind="synthetic", limit=10, calibration=5), (1, 8, 8))
    np.testing.assert_array_equal(ds2.eval_x, again.eval_x)
    np.testing.assert_array_equal(ds2.calib_x, again.calib_x)
    other = load_dataset(DatasetSpec(kind="synthetic", limit=10, calibration=5, seed=1), (1, 8, 8))
    assert not np.array_equal(ds2.eval_x, other.eval_x)
    assert abs(float(ds.eval_x.mean())) < 0.05 and abs(float(ds.eval_x.std()) - 1) < 0.05


def test_bad_input_size_is_a_load_error():
    with pytest.raises(StageError) as e:
        load_dataset(DatasetSpec(kind="synthetic"), (3, 0, 32))
    assert e.value.stage == "load"


# ---- image folder -------------------------------------------------------------------------------

def _write_folder(root: Path, per_class: int = 6) -> Path:
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        d = root / cls
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = np.zeros((20 + i, 30, 3), np.uint8) + np.array(colour, np.uint8)
            arr = np.clip(arr.astype(int) + rng.integers(-10, 10, arr.shape), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"img{i}.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_rgb(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    ds = load_dataset(DatasetSpec(kind="imagefolder", path=str(root), calibration=4), (3, 16, 24))
    assert ds.classes == ["cat", "dog"]
    assert ds.calib_x.shape == (4, 3, 16, 24) and ds.calib_x.dtype == np.float32
    assert ds.eval_x.shape == (8, 3, 16, 24) and ds.eval_x.dtype == np.float32
    assert ds.eval_y.dtype == np.int64 and set(ds.eval_y) <= {0, 1}
    # red images are class 0, blue class 1; after ImageNet normalisation red > blue channel for cats
    red_minus_blue = ds.eval_x[:, 0].mean(axis=(1, 2)) - ds.eval_x[:, 2].mean(axis=(1, 2))
    np.testing.assert_array_equal(ds.eval_y, (red_minus_blue < 0).astype(np.int64))
    # pixel 255 in the red channel normalises to (1 - 0.485) / 0.229
    cats = ds.eval_x[ds.eval_y == 0]
    assert abs(float(cats[:, 0].mean()) - (1 - 0.485) / 0.229) < 0.2


def test_imagefolder_grey_limit_and_determinism(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    spec = DatasetSpec(kind="imagefolder", path=str(root), calibration=3, limit=5, seed=7)
    a = load_dataset(spec, (1, 10, 10))
    b = load_dataset(spec, (1, 10, 10))
    assert a.eval_x.shape == (5, 1, 10, 10) and a.calib_x.shape == (3, 1, 10, 10)
    np.testing.assert_array_equal(a.eval_x, b.eval_x)
    np.testing.assert_array_equal(a.eval_y, b.eval_y)
    # calibration and evaluation images are different files: no row of one appears in the other
    full = load_dataset(DatasetSpec(kind="imagefolder", path=str(root), calibration=3, seed=7), (1, 10, 10))
    assert len(full.eval_x) == 9
    np.testing.assert_array_equal(full.eval_x[:5], a.eval_x)
    for c in full.calib_x:
        assert not any(np.array_equal(c, e) for e in full.eval_x)


def test_imagefolder_small_folder_keeps_calibration_disjoint(tmp_path):
    root = _write_folder(tmp_path / "imgs", per_class=2)
    ds = load_dataset(DatasetSpec(kind="imagefolder", path=str(root)), (3, 8, 8))   # calibration=64 > 4 images
    assert len(ds.calib_x) + len(ds.eval_x) == 4 and len(ds.eval_x) >= 1 and len(ds.calib_x) >= 1


def test_imagefolder_missing_path(tmp_path):
    with pytest.raises(StageError) as e:
        load_dataset(DatasetSpec(kind="imagefolder", path=str(tmp_path / "nope")), (3, 32, 32))
    assert e.value.stage == "load"
    assert "nope" in str(e.value) and "not found" in str(e.value)


def test_imagefolder_without_images(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("x")
    with pytest.raises(StageError) as e:
        load_dataset(DatasetSpec(kind="imagefolder", path=str(tmp_path)), (3, 32, 32))
    assert e.value.stage == "load" and "images" in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageError, match="no class sub-folders"):
        load_dataset(DatasetSpec(kind="imagefolder", path=str(empty)), (3, 32, 32))


def test_imagefolder_corrupt_image(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    (root / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(StageError) as e:
        load_dataset(DatasetSpec(kind="imagefolder", path=str(root), calibration=2), (3, 8, 8))
    assert e.value.stage == "load" and "broken.png" in str(e.value)


# ---- the demo model -----------------------------------------------------------------------------

def test_demo_checkpoint_is_accurate_on_the_heldout_split():
    torch = pytest.importorskip("torch")
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    meta = json.loads((DIGITS_DIR / "model.json").read_text())
    ckpt = DIGITS_DIR / "model.safetensors"
    assert ckpt.stat().st_size < 10 * 1024 * 1024
    sweep = load_sweep(REPO / "examples" / "sweep.yaml")
    spec = sweep.models[0]
    assert spec.source == f"timm:{meta['arch']}"
    assert tuple(spec.input_size) == tuple(meta["input_size"]) == (3, 32, 32)
    assert (REPO / spec.checkpoint).resolve() == ckpt.resolve()

    model = timm.create_model(meta["arch"], num_classes=10)
    model.load_state_dict(load_file(str(ckpt)))          # strict: every key must fit
    model.eval()
    ds = load_dataset(sweep.dataset, spec.input_size)
    assert len(ds.eval_x) == 540
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(ds.eval_x[i:i + 128])).argmax(1)
                          for i in range(0, len(ds.eval_x), 128)]).numpy()
    accuracy = float((pred == ds.eval_y).mean())
    assert accuracy >= 0.95
    assert abs(accuracy - meta["heldout_accuracy"]) < 0.01
