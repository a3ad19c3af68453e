"""Loaders on tiny generated folders, in both CIFAR layouts and the generic class-folder one."""
import pickle

import numpy as np
import pytest
from PIL import Image

from ccl.data import load_dataset
from ccl.data import cifar as cifar_module
from ccl.data.scenarios import class_order, get_scenario, scenarios, split_classes
from ccl.errors import CclError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_class_folders(root, classes, per_class, size=(32, 32), suffix=".png"):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((*size, 3), label * 20, dtype=np.uint8) + rng.integers(0, 5, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:04d}{suffix}")


def test_cifar_class_folder_layout_and_cache(tmp_path, monkeypatch, caplog):
    write_class_folders(tmp_path / "cifar10", CIFAR_CLASSES, 2)
    with caplog.at_level("INFO", logger="ccl"):
        data = load_dataset("cifar10", tmp_path, download=False)
    # a first decoding says so, then where its cache went and how large it is: two lines
    cache = next((tmp_path / "cifar10" / ".ccl-cache").glob("cifar10-*.npz"))
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"decoding the images of {tmp_path / 'cifar10'}", f"cached the decoded images in {cache}"]
    assert caplog.records[1].getMessage().endswith("KiB)")
    caplog.clear()
    assert data.train_x.shape == (20, 32, 32, 3) and data.train_x.dtype == np.uint8
    assert data.classes == CIFAR_CLASSES
    assert np.array_equal(np.bincount(data.train_y), [2] * 10)
    assert data.train_x[data.train_y == 3].min() >= 60  # label 3 images were filled with 60
    # the second load reads the cache and never decodes
    monkeypatch.setattr(cifar_module, "_from_class_folders", lambda *a, **k: pytest.fail("decoded twice"))
    with caplog.at_level("INFO", logger="ccl"):
        again = load_dataset("cifar10", tmp_path, download=False)
    assert np.array_equal(again.train_x, data.train_x) and not caplog.records  # a cache hit is silent


def test_cifar_torchvision_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES]}))
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.train_x.shape == (50, 32, 32, 3) and data.test_x.shape == (10, 32, 32, 3)
    first = pickle.loads((folder / "data_batch_1").read_bytes())[b"data"][0]
    assert np.array_equal(data.train_x[0], first.reshape(3, 32, 32).transpose(1, 2, 0))


def test_missing_cifar_names_folder_and_both_layouts(tmp_path):
    with pytest.raises(CclError) as e:
        load_dataset("cifar10", tmp_path / "nowhere", download=False)
    msg = str(e.value)
    assert "nowhere" in msg and "train/<class>" in msg and "cifar-10-batches-py" in msg


def test_corrupt_pickle_is_a_clear_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(CclError, match="corrupt"):
        load_dataset("cifar10", tmp_path, download=False)


def test_folder_skips_unreadable_files_with_a_warning(tmp_path, caplog):
    write_class_folders(tmp_path, ["a", "b", "c"], 3, size=(8, 8))
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"garbage")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "train" / "b" / "small.png")
    data = load_dataset("folder", tmp_path)
    assert data.train_x.shape == (9, 8, 8, 3)
    assert "skipped 1 unreadable file(s) and 1 image(s) not of size 8x8" in caplog.text


def test_folder_with_an_empty_class_is_an_error(tmp_path):
    write_class_folders(tmp_path, ["a", "b"], 2, size=(8, 8))
    for f in (tmp_path / "train" / "b").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(CclError, match="'b' has no usable images"):
        load_dataset("folder", tmp_path)


def test_folder_without_split_is_split_per_class(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    data = load_dataset("folder", tmp_path)
    assert data.shape == (1, 6, 6)  # greyscale stays one channel
    assert np.array_equal(np.bincount(data.test_y), [2, 2]) and np.array_equal(np.bincount(data.train_y), [8, 8])


def test_digits_split_is_fixed_and_stratified():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.train_x.shape[1:] == (8, 8, 1) and len(a.train_y) + len(a.test_y) == 1797
    assert np.array_equal(a.test_y, b.test_y)
    assert np.bincount(a.test_y).min() >= 35


def test_first_per_class_keeps_the_first_images():
    data = load_dataset("digits").first_per_class(5)
    assert np.array_equal(np.bincount(data.train_y), [5] * 10)


def test_scenarios_and_class_order():
    assert {"split-digits", "split-cifar10", "split-cifar100", "split-folder"} <= set(scenarios())
    assert get_scenario("split-cifar100").experiences == 10
    assert class_order(10, 3) == class_order(10, 3) != class_order(10, 4)
    assert split_classes(list(range(10)), 5) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert split_classes(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(CclError):
        class_order(4, 0, [0, 1, 1, 3])
    with pytest.raises(CclError):
        get_scenario("split-mnist")


def test_missing_cifar_says_whether_a_download_was_tried_and_creates_nothing(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    missing = tmp_path / "typo"
    with pytest.raises(CclError, match=r"a torchvision download failed \(OSError: no network\)"):
        load_dataset("cifar10", missing, download=True)
    assert not missing.exists()  # a mistyped --data-dir is not left behind
    with pytest.raises(CclError, match=r"nothing downloaded; pass --data-dir DIR"):
        load_dataset("cifar10", missing, download=False)


def test_a_crafted_cifar_pickle_runs_no_code(tmp_path):
    # torchvision's layout is pickles: only arrays, lists and bytes may come out of them.
    import pathlib

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (tmp_path / "pwned",)

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 255, (10, 3072), dtype=np.uint8), b"labels": list(range(10))}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))  # protocol 2 as the originals
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [Payload()]}))
    with pytest.raises(CclError, match="refusing pathlib"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


def test_silent_changes_warn_on_every_run_cached_or_not(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("x", "y"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(tmp_path / split / name / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(tmp_path / "train" / "x" / "rgb.png")
    (tmp_path / "train" / "y" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "test" / "z").mkdir()  # a class only under test/
    Image.fromarray(rng.integers(0, 255, (6, 6), dtype=np.uint8)).save(tmp_path / "test" / "z" / "0.png")
    for attempt in ("decoded", "from the cache"):
        caplog.clear()
        with caplog.at_level("WARNING"):
            data = load_dataset("folder", tmp_path)
        text = caplog.text
        assert data.shape == (3, 6, 6), attempt
        assert "1 colour image(s) among 8 greyscale ones: all are read as RGB" in text, attempt
        assert "skipped 1 unreadable file(s)" in text, attempt
        assert "z exist only under test/ and are ignored" in text, attempt
