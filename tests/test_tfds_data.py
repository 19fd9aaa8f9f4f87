"""tensorflow-datasets sets (issue 6): reading prepared splits, the ``data prepare`` command, bad input.

No TensorFlow and no internet: the ``prepared`` fixture writes a tiny copy of each dataset the way
``download_and_prepare(file_format="array_record")`` lays it out (ArrayRecord shards of serialized
``tf.train.Example`` protos, plus ``dataset_info.json``), so reads go through the real tfds code path.
``tfds.testing.mock_data`` replaces the records with random ones; it needs the metadata in ``data_dir``
and cannot serve LFW's label-only read (custom decoders need TensorFlow there), so it covers the other four.
"""

import io
import json
import os
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
from array_record.python.array_record_module import ArrayRecordWriter  # noqa: E402
from PIL import Image  # noqa: E402
from tensorflow_datasets.core import naming  # noqa: E402
from tensorflow_datasets.core import splits as splits_lib
from tensorflow_datasets.proto import tf_example_pb2  # noqa: E402

from dlg_jax.cli import main  # noqa: E402
from dlg_jax.data import tfds_data  # noqa: E402
from dlg_jax.data.datasets import get_dataset  # noqa: E402

NAMES = tfds_data.TFDS_NAMES
SPLIT_SIZES = {"mnist": {"train": 6, "test": 4}, "cifar10": {"train": 6, "test": 4},
               "cifar100": {"train": 6, "test": 4}, "svhn_cropped": {"train": 6, "test": 4, "extra": 2},
               "lfw": {"train": 6}}
LFW_PEOPLE = ("Zoe_Zed", "Ann_Arbor", "Bob_Burns")  # record i shows LFW_PEOPLE[i % 3]
READ_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),  # default image_size:
               "svhn_cropped": (32, 32, 3), "lfw": (32, 32, 3)}  # native, 32 for lfw
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
NUM_CLASSES = {"mnist": 10, "cifar10": 10, "cifar100": 100, "svhn_cropped": 10, "lfw": 3}


def _image(name: str, split: str, i: int, shape) -> np.ndarray:
    seed = [NAMES.index(name), list(SPLIT_SIZES[name]).index(split), i]
    if name == "lfw":  # 25 x 25 blocks of 10 x 10 pixels: smooth enough for JPEG to keep
        small = np.random.default_rng(seed).integers(0, 256, (25, 25, 3), dtype=np.uint8)
        return small.repeat(10, axis=0).repeat(10, axis=1)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _label(name: str, i: int):
    return LFW_PEOPLE[i % 3] if name == "lfw" else (3 * i + 1) % NUM_CLASSES[name]


def _record(builder, name: str, split: str, i: int) -> bytes:
    """One serialized ``tf.train.Example`` with every feature of the builder (image PNG, or JPEG for lfw)."""
    example = tf_example_pb2.Example()
    for key, feature in builder.info.features.items():
        values = example.features.feature[key]
        if isinstance(feature, tfds.features.Image):
            image = _image(name, split, i, feature.shape)
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0] if feature.shape[-1] == 1 else image).save(
                buffer, format="JPEG" if name == "lfw" else "PNG", quality=95, subsampling=0)
            values.bytes_list.value.append(buffer.getvalue())
        elif isinstance(feature, tfds.features.ClassLabel):
            values.int64_list.value.append(_label(name, i) if key == "label" else i % feature.num_classes)
        else:  # Text: lfw's label, the cifar/svhn ids
            values.bytes_list.value.append(str(_label(name, i) if key == "label" else f"{split}_{i}").encode())
    return example.SerializeToString()


def write_prepared(root, name: str, file_format: str = "array_record") -> None:
    """Lay out ``name`` under ``root`` as tfds' ``download_and_prepare`` does, with SPLIT_SIZES records."""
    builder = tfds.builder(name, data_dir=root, file_format=file_format)
    os.makedirs(builder.data_dir)
    if name == "cifar10":  # preparing reads the names from the archive
        builder.info.features["label"].names = CIFAR10_NAMES
    infos = []
    for split, size in SPLIT_SIZES[name].items():
        template = naming.ShardedFileTemplate(data_dir=builder.data_dir, dataset_name=name, split=split,
                                              filetype_suffix=file_format)
        path = os.fspath(template.sharded_filepath(shard_index=0, num_shards=1))
        if file_format == "array_record":
            writer = ArrayRecordWriter(path, "group_size:1")
            for i in range(size):
                writer.write(_record(builder, name, split, i))
            writer.close()
        infos.append(splits_lib.SplitInfo(name=split, shard_lengths=[size], num_bytes=0,
                                          filename_template=template))
    builder.info.set_splits(splits_lib.SplitDict(infos))
    builder.info.write_to_directory(builder.data_dir)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    for name in NAMES:
        write_prepared(root, name)
    return str(root)


def _cli(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("name", NAMES)
def test_examples_are_the_prepared_records(prepared, name):
    source = get_dataset(name, data_dir=prepared)
    split = "train" if name == "lfw" else "test"
    assert source.size == SPLIT_SIZES[name][split]
    assert source.input_shape == READ_SHAPES[name]
    assert source.num_classes == NUM_CLASSES[name] == len(source.class_names)
    images, labels = source.examples([3, 1])
    assert images.shape == (2, *READ_SHAPES[name]) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and labels.dtype == np.int32
    if name == "lfw":  # integer label = position among the sorted names; images resized 250 -> 32
        assert source.class_names == ("Ann_Arbor", "Bob_Burns", "Zoe_Zed")
        assert labels.tolist() == [2, 0]
    else:
        assert labels.tolist() == [_label(name, 3), _label(name, 1)]
        np.testing.assert_array_equal(images[0], _image(name, split, 3, READ_SHAPES[name]) / np.float32(255))
    if name == "cifar10":
        assert source.class_names == CIFAR10_NAMES


def test_splits_and_image_size(prepared):
    assert get_dataset("svhn_cropped", split="extra", data_dir=prepared).size == 2
    train = get_dataset("mnist", split="train", data_dir=prepared, image_size=32)
    images, _ = train.examples([5])
    assert train.size == 6 and images.shape == (1, 32, 32, 1) and train.input_shape == (32, 32, 1)
    native = get_dataset("lfw", data_dir=prepared, image_size=250).examples([0])[0][0]
    assert np.abs(native - _image("lfw", "train", 0, (250, 250, 3)) / 255.0).mean() < 0.02  # JPEG
    big = get_dataset("lfw", data_dir=prepared, image_size=64).examples([0])[0]
    resized = Image.fromarray(np.round(native * 255).astype(np.uint8)).resize((64, 64), Image.Resampling.BILINEAR)
    np.testing.assert_allclose(big[0], np.asarray(resized) / 255.0, atol=1e-6)


def test_tfds_data_dir_environment_variable(prepared, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", prepared)
    assert get_dataset("cifar100").size == 4


def test_under_tfds_mock_data(prepared):
    with tfds.testing.mock_data(num_examples=3, data_dir=prepared):
        for name in ("mnist", "cifar10", "cifar100", "svhn_cropped"):
            source = get_dataset(name, data_dir=prepared)
            images, labels = source.examples([0, 1, 2])
            assert source.size == 3 and images.shape == (3, *READ_SHAPES[name])
            assert 0 <= images.min() <= images.max() <= 1 and ((0 <= labels) & (labels < NUM_CLASSES[name])).all()


CHEAP = ("--model", "mlp", "--solver", "adam")  # the smallest compile: ~8 s of CPU per run


@pytest.mark.parametrize("name, extra", [("mnist", ()), ("lfw", ("--batch-size", "2", "--index", "3"))])
def test_attack_command(prepared, tmp_path, capsys, name, extra):
    status, out, err = _cli(capsys, "attack", "--dataset", name, "--data-dir", prepared, "--iterations", 3,
                            "--restarts", 1, "--quiet", "--out", tmp_path, *CHEAP, *extra)
    assert status == 0, err
    with open(tmp_path / "metrics.json") as handle:
        metrics = json.load(handle)
    assert metrics["dataset"] == name and len(metrics["targets"]) == 1
    if name == "lfw":
        assert metrics["targets"][0]["indices"] == [3, 4] and metrics["targets"][0]["true_labels"] == [2, 0]
    assert (tmp_path / "reconstruction.png").exists() and "mean PSNR" in out


def test_bad_input_exits_2_with_one_line(prepared, tmp_path, capsys, monkeypatch):
    attack = ("attack", "--iterations", 1, "--restarts", 1, "--quiet", "--out", tmp_path / "out")
    missing = tmp_path / "nowhere"
    empty = tmp_path / "empty"
    empty.mkdir()
    tfrecord = tmp_path / "tfrecord"
    write_prepared(tfrecord, "mnist", file_format="tfrecord")
    cases = [
        (("--dataset", "imagenet"), "unknown dataset 'imagenet'; allowed: colour, digits, faces, mnist"),
        (("--dataset", "mnist", "--data-dir", prepared, "--split", "validation"),
         "unknown split 'validation' for dataset 'mnist'; allowed: train, test"),
        (("--dataset", "lfw", "--data-dir", prepared, "--split", "test"), "unknown split 'test' for dataset 'lfw'; allowed: train"),
        (("--dataset", "mnist", "--data-dir", prepared, "--index", 4), "index 4 is outside dataset 'mnist test split'"),
        (("--dataset", "mnist", "--data-dir", missing), f"data dir {str(missing)!r} does not exist"),
        (("--dataset", "cifar10", "--data-dir", empty),
         f"dataset 'cifar10' is not prepared in {str(empty)!r} (looked for {empty}/cifar10/"),
        (("--dataset", "mnist", "--data-dir", tfrecord), "is stored as tfrecord, which cannot be read by index"),
        (("--dataset", "mnist", "--image-size", 0), "expected an integer >= 1, got '0'"),
    ]
    for options, message in cases:
        status, _, err = _cli(capsys, *attack, *options)
        assert status == 2 and message in err and err.count("\n") == 1, (options, err)
    assert f"run: dlg-jax data prepare cifar10 --data-dir {empty}" in _cli(
        capsys, *attack, "--dataset", "cifar10", "--data-dir", empty)[2]
    monkeypatch.setenv("TFDS_DATA_DIR", str(missing))
    assert "data dir (from $TFDS_DATA_DIR)" in _cli(capsys, *attack, "--dataset", "mnist")[2]
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # as if not installed
    status, _, err = _cli(capsys, *attack, "--dataset", "mnist", "--data-dir", prepared)
    assert status == 2 and "pip install 'dlg-jax[tfds]'" in err


def test_data_prepare(tmp_path, capsys, monkeypatch):
    status, _, err = _cli(capsys, "data", "prepare", "mnist", "--data-dir", tmp_path)
    assert status == 2 and "pip install 'dlg-jax[prepare]'" in err and err.count("\n") == 1
    for argv, message in [(("data",), "the following arguments are required: ACTION"),
                          (("data", "prepare", "emnist"), "unknown dataset 'emnist'; allowed: mnist, cifar10")]:
        status, _, err = _cli(capsys, *argv)
        assert status == 2 and message in err, err

    calls = []
    monkeypatch.setattr(tfds_data, "missing_prepare_packages", lambda: [])
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda self, download_config: calls.append((self, download_config)))
    status, _, err = _cli(capsys, "data", "prepare", "lfw", "--manual-dir", tmp_path / "nothing")
    assert status == 2 and "manual dir" in err and not calls
    status, out, _ = _cli(capsys, "data", "prepare", "lfw", "--data-dir", tmp_path / "new", "--manual-dir", tmp_path)
    builder, config = calls[0]
    assert status == 0 and out == f"prepared lfw in {tmp_path}/new/lfw/0.1.1\n"
    assert os.fspath(config.manual_dir) == str(tmp_path) and builder.info.file_format.value == "array_record"
