"""Labelled image sets from small real files: ImageFolder (PNG/JPEG), CIFAR pickles, and Debian's Fashion-MNIST."""
import collections
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from edgevit.data import datasets
from edgevit.data import (ImageSet, available_sources, balanced_indices, batches, calibration_and_evaluation,
                          check_compatible, fashion_mnist, load_images)
from edgevit.data.labels import FASHION_MNIST
from edgevit.data.transforms import to_model_input
from edgevit.errors import EdgevitError

CLASSES = ["cat", "dog", "emu"]


def colour(label, item):
    """A solid colour that encodes class and item, so a decoded image says which file it came from."""
    return (40 + 60 * label, 10 + 20 * item, 200)


def write_image(path, rgb, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).convert(mode).save(path)


def make_folder(root, per_class=5, odd_size=(20, 6), mode="RGB"):
    """CLASS/*.png plus one JPEG per class and one image per class at another size."""
    for label, name in enumerate(CLASSES):
        for item in range(per_class):
            suffix = ".jpg" if item == 1 else ".png"
            size = odd_size if item == 2 else (12, 10)
            write_image(root / name / f"{item}{suffix}", colour(label, item), size, mode)
    return root


def item_of(image):
    """Which `colour` item an RGB image of `make_folder` shows (JPEG is lossy: nearest match)."""
    return int(round((float(image[..., 1].mean()) - 10) / 20))


def test_image_folder_split_80_20(tmp_path):
    root = make_folder(tmp_path / "flat")
    train, test = load_images(str(root), "train"), load_images(str(root), "test")
    assert (len(train), len(test)) == (12, 3)
    assert train.classes == test.classes == CLASSES
    assert train.images.shape == (12, 10, 12, 3) and train.images.dtype == np.uint8  # (N, H, W, 3), W=12 H=10
    assert train.labels.dtype == np.int64 and train.channels == 3
    assert np.bincount(train.labels).tolist() == [4, 4, 4] and np.bincount(test.labels).tolist() == [1, 1, 1]
    assert train.name == f"imagefolder:{root} (train)" and train.origin == test.origin
    for images in (train, test):
        for image, label in zip(images.images, images.labels):
            expected = colour(label, item_of(image))
            assert np.abs(image.reshape(-1, 3).astype(int) - expected).max() <= 3  # resized solid colour stays put
    assert set(train.indices).isdisjoint(test.indices) and len(set(train.indices) | set(test.indices)) == 15
    again = load_images(str(root), "val")  # "val" is "test"; the split is seeded, not random
    assert np.array_equal(again.indices, test.indices) and np.array_equal(again.images, test.images)


def test_image_folder_train_val_subfolders_grayscale(tmp_path):
    root = tmp_path / "split"
    make_folder(root / "train", per_class=3, mode="L")
    for label, name in enumerate(CLASSES[:2]):  # emu has no validation images: labels must still agree
        write_image(root / "val" / name / "0.png", colour(label, 0), mode="L")
    train, val = load_images(str(root), "train"), load_images(str(root), "val")
    assert train.classes == val.classes == CLASSES
    assert train.images.shape == (9, 10, 12) and val.images.shape == (2, 10, 12) and val.channels == 1
    assert val.labels.tolist() == [0, 1] and val.name == f"imagefolder:{root} (val)"
    expected = Image.new("RGB", (1, 1), colour(1, 0)).convert("L").getpixel((0, 0))
    assert (val.images[1] == expected).all()
    assert train.origin != val.origin  # different files: indices may repeat without overlapping
    calibration, evaluation = calibration_and_evaluation(str(root), calib_samples=3)
    assert sorted(calibration.labels.tolist()) == [0, 1, 2] and len(evaluation) == 2


def test_image_folder_test_subfolder_and_mixed_modes(tmp_path):
    root = tmp_path / "mixed"
    write_image(root / "train" / "cat" / "0.png", (10, 20, 30))
    write_image(root / "train" / "dog" / "0.png", (90, 90, 90), mode="L")
    write_image(root / "test" / "cat" / "0.bmp", (1, 2, 3), size=(4, 4))
    write_image(root / "test" / "dog" / "0.webp", (5, 6, 7))
    train, test = load_images(str(root), "train"), load_images(str(root), "test")
    assert train.images.shape == (2, 10, 12, 3)  # one RGB file makes the whole set RGB
    assert (train.images[1] == 90).all()  # grayscale replicated into R, G and B
    assert test.images.shape == (2, 10, 12, 3)  # the 4x4 BMP is resized to the common 12x10
    assert np.abs(test.images[0].astype(int) - (1, 2, 3)).max() <= 1


def write_cifar(root, source, train_labels, test_labels, seed=0):
    """The python-version archives as published: pickled dicts with bytes keys, data (N, 3072) = R, G, B planes."""
    generator = np.random.default_rng(seed)
    folder = root / ("cifar-10-batches-py" if source == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)

    def dump(name, labels):
        data = generator.integers(0, 256, (len(labels), 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"data": data, b"filenames": [b"x.png"] * len(labels)}
        if source == "cifar10":
            batch[b"labels"] = list(labels)
        else:
            batch[b"fine_labels"], batch[b"coarse_labels"] = list(labels), [label // 5 for label in labels]
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        return data

    if source == "cifar10":
        chunks = np.array_split(np.asarray(train_labels), 5)
        train = np.concatenate([dump(f"data_batch_{i + 1}", chunk.tolist()) for i, chunk in enumerate(chunks)])
        test = dump("test_batch", test_labels)
        meta = {b"num_cases_per_batch": 10000, b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    else:
        train, test = dump("train", train_labels), dump("test", test_labels)
        meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}
        (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder, train, test


def test_cifar10(tmp_path):
    folder, train_data, test_data = write_cifar(tmp_path, "cifar10", [0, 1, 2, 3, 4] * 2, [5, 6, 7])
    train = load_images("cifar10", "train", str(tmp_path))
    assert train.name == "cifar10/train" and train.classes == [f"c{i}" for i in range(10)]
    assert train.images.shape == (10, 32, 32, 3) and train.channels == 3
    assert train.labels.tolist() == [0, 1, 2, 3, 4] * 2
    first = train_data[0]
    assert train.images[0, 0, 0].tolist() == [first[0], first[1024], first[2048]]  # R, G, B of the top-left pixel
    assert train.images[0, 1, 2, 1] == first[1024 + 32 + 2]  # rows are row-major 32x32 planes
    test = load_images("cifar10", "test", str(folder))  # the batches folder itself works too
    assert test.labels.tolist() == [5, 6, 7]
    assert np.array_equal(test.images, test_data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))


def test_cifar100_fine_labels(tmp_path):
    write_cifar(tmp_path, "cifar100", [10, 99, 42], [7, 8])
    train, test = load_images("cifar100", "train", str(tmp_path)), load_images("cifar100", "test", str(tmp_path))
    assert len(train.classes) == 100 and train.classes[99] == "f99"
    assert train.labels.tolist() == [10, 99, 42] and test.labels.tolist() == [7, 8]
    assert test.images.shape == (2, 32, 32, 3)


def test_cifar_errors(tmp_path):
    with pytest.raises(EdgevitError, match="cifar10 needs --data DIR holding cifar-10-batches-py"):
        load_images("cifar10")
    with pytest.raises(EdgevitError, match="test_batch, batches.meta not found"):
        load_images("cifar10", data_dir=str(tmp_path))
    folder, _, _ = write_cifar(tmp_path, "cifar10", [0] * 5, [1])
    (folder / "test_batch").write_bytes(pickle.dumps(collections.OrderedDict(), protocol=2))
    with pytest.raises(EdgevitError, match="collections.OrderedDict is not allowed"):  # pickles may not run code
        load_images("cifar10", "test", str(tmp_path))


def test_calibration_and_evaluation_are_disjoint_and_balanced(tmp_path):
    root = make_folder(tmp_path / "flat", per_class=10)
    calibration, evaluation = calibration_and_evaluation(str(root), calib_samples=6, seed=3)
    assert calibration.origin == evaluation.origin  # same files, so the indices must not meet
    assert set(calibration.indices).isdisjoint(evaluation.indices)
    assert np.bincount(calibration.labels).tolist() == [2, 2, 2] and len(evaluation) == 6
    assert calibration.name.endswith("(train)") and evaluation.name.endswith("(test)")
    again, _ = calibration_and_evaluation(str(root), calib_samples=6, seed=3)
    assert np.array_equal(again.indices, calibration.indices)
    _, part = calibration_and_evaluation(str(root), calib_samples=1, eval_samples=3)
    assert np.bincount(part.labels).tolist() == [1, 1, 1]


def test_sample_decodes_only_the_chosen_files(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "flat", per_class=10)
    decoded = []
    original = datasets._decode
    monkeypatch.setattr(datasets, "_decode", lambda path, *args: decoded.append(path) or original(path, *args))
    calibration = load_images(str(root), "train", sample=4, seed=5)
    assert len(decoded) == 4 and len(calibration) == 4 and calibration.images.shape == (4, 10, 12, 3)
    assert [int(path.stem) for path in decoded] == [item_of(image) for image in calibration.images]


def test_balanced_indices():
    labels = np.array([0] * 50 + [1] * 50 + [2] * 5)
    picked = balanced_indices(labels, 30, seed=1)
    counts = np.bincount(labels[picked])
    assert len(set(picked)) == 30 and counts[2] == 5 and abs(counts[0] - counts[1]) <= 1  # small class: all of it
    assert np.all(np.diff(picked) > 0)  # source order is kept
    assert np.array_equal(picked, balanced_indices(labels, 30, seed=1))
    assert not np.array_equal(picked, balanced_indices(labels, 30, seed=2))
    remainders = {tuple(np.bincount(labels[balanced_indices(labels, 4, seed)], minlength=3)) for seed in range(20)}
    assert len(remainders) > 1  # the extra item does not always go to class 0


def test_calibration_errors(tmp_path):
    root = make_folder(tmp_path / "flat")
    with pytest.raises(EdgevitError, match="calib_samples must be at least 1, got 0"):
        calibration_and_evaluation(str(root), calib_samples=0)
    with pytest.raises(EdgevitError, match=r"\(train\) has 12 images, fewer than the 13 requested"):
        calibration_and_evaluation(str(root), calib_samples=13)
    with pytest.raises(EdgevitError, match=r"\(test\) has 3 images, fewer than the 4 requested"):
        calibration_and_evaluation(str(root), calib_samples=1, eval_samples=4)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(EdgevitError, match="no images in .*empty: expected CLASS/"):
        calibration_and_evaluation(str(tmp_path / "empty"))
    write_image(tmp_path / "single" / "cat" / "0.png", (1, 2, 3))
    with pytest.raises(EdgevitError, match=r"\(test\) has no images \(a class needs 2 images"):
        calibration_and_evaluation(str(tmp_path / "single"), calib_samples=1)


def test_load_errors(tmp_path):
    with pytest.raises(EdgevitError, match="(?s)unknown image source 'imagenet': use one of.*fashion-mnist"):
        load_images("imagenet")
    with pytest.raises(EdgevitError, match="unknown split 'dev'"):
        load_images("cifar10", "dev")
    with pytest.raises(EdgevitError, match=r"apt-get install dataset-fashion-mnist.*--data DIR"):
        load_images("fashion-mnist", data_dir=str(tmp_path))
    (tmp_path / "bad" / "cat").mkdir(parents=True)
    (tmp_path / "bad" / "cat" / "0.png").write_text("not a PNG")
    with pytest.raises(EdgevitError, match="cannot read image .*0.png"):
        load_images(str(tmp_path / "bad"), "train")
    assert len(available_sources()) == 4 and all(": " in line for line in available_sources())


def image_set(labels, classes=10, shape=(8, 8)):
    labels = np.asarray(labels, dtype=np.int64)
    images = np.zeros((len(labels), *shape), dtype=np.uint8)
    return ImageSet("toy", images, labels, [str(i) for i in range(classes)], np.arange(len(labels)), "toy")


def test_check_compatible():
    check_compatible(image_set([0, 9]), 10, 3)  # grayscale for an RGB model is replicated
    check_compatible(image_set([0, 9], shape=(8, 8, 3)), 10, 1)  # RGB for a grayscale model becomes luminance
    with pytest.raises(EdgevitError, match="the model predicts 1000 classes, the data has 10: train a model on this "
                                           r"data first \(edgevit train\) or pass weights trained on it"):
        check_compatible(image_set([0]), 1000, 3)
    with pytest.raises(EdgevitError, match="the model predicts 10 classes, the data has 100"):
        check_compatible(image_set([0], classes=100), 10, 3)
    with pytest.raises(EdgevitError, match=r"labels 0..12, outside the model's 0..9"):
        check_compatible(image_set([0, 12]), 10, 3)
    with pytest.raises(EdgevitError, match="4-channel images, the model takes 3 channels"):
        check_compatible(image_set([0], shape=(8, 8, 4)), 10, 3)
    with pytest.raises(EdgevitError, match="1-channel images, the model takes 4 channels"):
        check_compatible(image_set([0]), 10, 4)


def test_batches_in_order(tmp_path):
    images = image_set(list(range(10)) * 2 + [3])
    images.images[:] = np.arange(21, dtype=np.uint8)[:, None, None] * 10
    cfg = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
    got = list(batches(images, cfg, batch_size=8))
    assert [tuple(inputs.shape) for inputs, _ in got] == [(8, 3, 16, 16), (8, 3, 16, 16), (5, 3, 16, 16)]
    labels = torch.cat([labels for _, labels in got])
    assert labels.dtype == torch.int64 and labels.tolist() == images.labels.tolist()
    first = torch.cat([inputs for inputs, _ in got])[:, :, 0, 0]
    expected = (torch.arange(21.0) * 10 / 255 - 0.5) / 0.5
    assert torch.allclose(first, expected[:, None].expand(21, 3), atol=1e-6)


def test_to_model_input_channels_last_and_luminance():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    cfg = {"input_size": (3, 5, 7), "mean": (0,) * 3, "std": (1,) * 3}
    assert torch.equal(to_model_input(rgb, cfg), to_model_input(rgb.transpose(0, 3, 1, 2), cfg))
    gray = to_model_input(rgb, {"input_size": (1, 5, 7), "mean": (0,), "std": (1,)})
    pillow = np.asarray(Image.fromarray(rgb[0]).convert("L"), dtype=np.float32) / 255
    assert gray.shape == (2, 1, 5, 7) and np.abs(gray[0, 0].numpy() - pillow).max() <= 1 / 255 + 1e-6


@pytest.mark.skipif(not fashion_mnist.available(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_files():
    test = load_images("fashion-mnist", "test")
    assert test.name == "fashion-mnist/test" and test.classes == FASHION_MNIST
    assert test.images.shape == (10000, 28, 28) and test.channels == 1
    assert np.bincount(test.labels).tolist() == [1000] * 10
    calibration, evaluation = calibration_and_evaluation("fashion-mnist", calib_samples=20, eval_samples=30)
    assert calibration.name == "fashion-mnist/train" and evaluation.name == "fashion-mnist/test"
    assert np.bincount(calibration.labels).tolist() == [2] * 10 and np.bincount(evaluation.labels).tolist() == [3] * 10
    assert np.array_equal(evaluation.images, test.images[evaluation.indices])
