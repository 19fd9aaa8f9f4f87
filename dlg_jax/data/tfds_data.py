"""Prepared tensorflow-datasets sets, read by random access (no TensorFlow at run time).

:func:`tfds_source` opens a split that ``dlg-jax data prepare NAME`` (:func:`prepare_dataset`) wrote as
ArrayRecord files under the data directory (``--data-dir``, else ``$TFDS_DATA_DIR``, else
``~/tensorflow_datasets``, as tfds does) and reads only the requested indices, through the builder's
``as_data_source`` (what ``tfds.data_source`` returns). Index ``i`` is the ``i``-th record of the split in
tfds' deterministic order, the same on every machine that prepared the same dataset version.

========================  ===========================  ========================  ===========
name                      native image [H, W, C]       classes                   default split
========================  ===========================  ========================  ===========
``mnist``                 28 x 28 x 1                  10 digits                 test
``cifar10``               32 x 32 x 3                  10                        test
``cifar100``              32 x 32 x 3                  100 (fine labels)         test
``svhn_cropped``          32 x 32 x 3                  10 digits                 test
``lfw``                   250 x 250 x 3, read at 32    5749 identities           train (only)
========================  ===========================  ========================  ===========

``image_size=S`` resizes every image to ``S x S`` (PIL bilinear with antialiasing, as torchvision's
``Resize`` that iDLG used); ``lfw`` defaults to 32 as in iDLG, the others to their native size. LFW's
label is the person's name (a text feature): the integer label is its position among the sorted names
of the whole dataset, so labels are stable however the data are split or indexed.
"""

import contextlib
import functools
import importlib.util
import logging
import os
import shlex

import numpy as np

from dlg_jax.data.datasets import DataSource, resize_image
from dlg_jax.errors import DLGInputError, check_choice, check_positive_int

TFDS_NAMES = ("mnist", "cifar10", "cifar100", "svhn_cropped", "lfw")
LFW_IMAGE_SIZE = 32
PREPARE_PACKAGES = ("tensorflow", "importlib_resources")


def import_tfds():
    """The ``tensorflow_datasets`` module; a :class:`DLGInputError` saying what to install if it (or pillow,
    which decodes the images without TensorFlow) is missing."""
    try:
        import PIL  # noqa: F401
        import tensorflow_datasets
    except ImportError as error:
        raise DLGInputError(
            f"tensorflow-datasets sets need the package {error.name!r}: pip install 'dlg-jax[tfds]'"
        ) from None
    return tensorflow_datasets


@contextlib.contextmanager
def _absl_warnings_hidden():
    """Hide the warnings tfds logs (through absl) that this module reports better or that do not
    concern reading a few images: a missing ``dataset_info.json`` while looking for an unprepared
    dataset, and OpenCV being absent (pillow decodes instead)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def resolve_data_dir(data_dir: str | os.PathLike | None, *, must_exist: bool) -> str:
    """``data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets`` (tfds' own default).

    With ``must_exist``, a directory the user named (argument or environment variable) that does not
    exist is a :class:`DLGInputError`; a missing default directory is left to the not-prepared check.
    """
    if data_dir is not None:
        named = os.path.expanduser(os.fspath(data_dir))
        origin = "data dir"
    elif os.environ.get("TFDS_DATA_DIR"):
        named = os.path.expanduser(os.environ["TFDS_DATA_DIR"])
        origin = "data dir (from $TFDS_DATA_DIR)"
    else:
        return os.path.expanduser(os.path.join("~", "tensorflow_datasets"))
    if must_exist and not os.path.isdir(named):
        raise DLGInputError(f"{origin} {named!r} does not exist or is not a directory; give the directory "
                            f"that 'dlg-jax data prepare NAME --data-dir DIR' wrote")
    return named


def prepared_builder(name: str, data_dir: str | os.PathLike | None = None):
    """The tfds builder of ``name`` prepared under the data directory, checked readable by random access."""
    check_choice("dataset", name, TFDS_NAMES)
    tfds = import_tfds()
    root = resolve_data_dir(data_dir, must_exist=True)
    with _absl_warnings_hidden():
        builder = tfds.builder(name, data_dir=root)
        prepared = builder.is_prepared()
    if not prepared:
        raise DLGInputError(f"dataset {name!r} is not prepared in {root!r} (looked for {builder.data_dir}); "
                            f"run: dlg-jax data prepare {name} --data-dir {shlex.quote(root)}")
    formats = builder.info.available_file_formats() & tfds.core.FileFormat.with_random_access()
    if not formats:
        stored = builder.info.file_format.value if builder.info.file_format else "tfrecord"
        raise DLGInputError(
            f"dataset {name!r} in {builder.data_dir} is stored as {stored}, which "
            f"cannot be read by index; delete that folder (or choose another data dir) and run: "
            f"dlg-jax data prepare {name} --data-dir {shlex.quote(root)}")
    return builder


@functools.cache
def _lfw_identities(version_dir: str) -> tuple[str, ...]:
    """The sorted person names of every split of the LFW copy in ``version_dir`` (labels only; the
    images are not decoded)."""
    tfds = import_tfds()
    builder = tfds.builder_from_directory(version_dir)
    names = set()
    for split in builder.info.splits:
        records = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
        names.update(_text(records[i]["label"]) for i in range(len(records)))
    return tuple(sorted(names))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_source(name: str, *, split: str | None = None, data_dir: str | os.PathLike | None = None,
                image_size: int | None = None) -> DataSource:
    """The prepared split ``split`` of tfds dataset ``name`` as a :class:`~dlg_jax.data.datasets.DataSource`.

    ``split`` defaults to ``"test"`` where the dataset has one (``lfw`` only has ``"train"``).
    ``examples(indices)`` reads only those records: ``(images [n, S, S, C] float32 in [0, 1], labels
    [n] int32)`` with ``S = image_size`` (default: native size; 32 for ``lfw``).
    """
    builder = prepared_builder(name, data_dir)
    splits = list(builder.info.splits)
    if split is None:
        split = "test" if "test" in splits else splits[0]
    if split not in splits:
        raise DLGInputError(f"unknown split {split!r} for dataset {name!r}; allowed: {', '.join(splits)}")
    height, width, channels = builder.info.features["image"].shape
    if image_size is not None:
        image_size = check_positive_int("image size", image_size)
    elif name == "lfw":
        image_size = LFW_IMAGE_SIZE
    if image_size is not None:
        height = width = image_size

    if name == "lfw":
        class_names = _lfw_identities(os.fspath(builder.data_dir))
        positions = {person: label for label, person in enumerate(class_names)}

        def to_label(raw) -> int:
            return positions[_text(raw)]
    else:
        class_names = tuple(builder.info.features["label"].names)
        to_label = int

    records = builder.as_data_source(split)

    def read(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``indices [n]`` -> ``(images [n, H, W, C] in [0, 1], labels [n] int64)``."""
        with _absl_warnings_hidden():
            examples = [records[int(i)] for i in indices]
        images = np.stack([ex["image"] if image_size is None else resize_image(ex["image"], image_size)
                           for ex in examples])
        labels = np.array([to_label(ex["label"]) for ex in examples], dtype=np.int64)
        return images / np.float32(255.0), labels

    return DataSource(
        name=f"{name} {split} split",
        size=len(records),
        input_shape=(height, width, channels),
        num_classes=len(class_names),
        class_names=class_names,
        read=read,
    )


def missing_prepare_packages() -> list[str]:
    """The packages that preparing a dataset needs (TensorFlow and importlib_resources) but are absent."""
    return [module for module in PREPARE_PACKAGES if importlib.util.find_spec(module) is None]


def prepare_dataset(name: str, *, data_dir: str | os.PathLike | None = None,
                    manual_dir: str | os.PathLike | None = None) -> str:
    """Download (or take from ``manual_dir``) and prepare ``name`` as ArrayRecord files under the data
    directory, which is created if missing; a no-op when already prepared. Returns the version folder.

    Needs TensorFlow (``pip install 'dlg-jax[prepare]'``); reading the result afterwards does not.
    ``manual_dir`` holds files downloaded by hand (the archives the tfds catalogue page of the dataset
    names), for datasets that require them or machines without internet access.
    """
    check_choice("dataset", name, TFDS_NAMES)
    tfds = import_tfds()
    missing = missing_prepare_packages()
    if missing:
        raise DLGInputError(f"preparing datasets needs TensorFlow ({', '.join(missing)} not installed): "
                            f"pip install 'dlg-jax[prepare]'")
    if manual_dir is not None and not os.path.isdir(os.path.expanduser(manual_dir)):
        raise DLGInputError(f"manual dir {os.fspath(manual_dir)!r} does not exist or is not a directory; "
                            f"give the directory that holds the downloaded files")
    root = resolve_data_dir(data_dir, must_exist=False)
    builder = tfds.builder(name, data_dir=root, file_format="array_record")
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.path.expanduser(manual_dir))
    builder.download_and_prepare(download_config=config)
    return os.fspath(builder.data_dir)
