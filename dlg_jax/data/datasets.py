"""Datasets: the embedded offline sets and (see ``tfds_data``) prepared tensorflow-datasets sets.

Every source is a :class:`DataSource`: ``size`` examples of shape ``input_shape = (H, W, C)`` with
integer labels in ``[0, num_classes)``; ``examples(indices)`` returns ``(images [n, H, W, C] float32 in
[0, 1], labels [n] int32)``. Indices are stable: index ``i`` is the same image on every machine.

Embedded sets (``dlg_jax/data/embedded_data.npz``, ~0.5 MB, real images that registry packages ship, rebuilt
bit-for-bit by :func:`build_embedded_arrays` from scikit-image and scikit-learn):

- ``colour``: 100 CIFAR-like 32x32x3 crops of the 10 colour photographs bundled with scikit-image
  (astronaut, chelsea, coffee, rocket, hubble_deep_field, immunohistochemistry, retina,
  stereo_motorcycle) and scikit-learn (china, flower); the label is the source photo; index
  ``i`` is crop ``i // 10`` of photo ``i % 10``.
- ``digits``: the first 200 of scikit-learn's 8x8 handwritten digits (UCI), scaled to 20x20 and padded
  to MNIST's 28x28x1 layout; labels 0-9.
- ``faces``: scikit-image's 200 LFW crops (25x25) scaled to 32x32x1; label 0 = face, 1 = non-face;
  even indices are faces, odd indices non-faces.

One's own images (:func:`file_source`, ``get_dataset(path)``): a folder with one sub-folder of images per
class, or an ``.npz`` file with arrays ``x`` and ``y``.
"""

import dataclasses
import functools
import os
from importlib import resources
from typing import Callable, Sequence

import numpy as np

from dlg_jax.errors import DLGInputError, check_choice, check_positive_int

EMBEDDED_NAMES = ("colour", "digits", "faces")
EMBEDDED_FILE = "embedded_data.npz"
EMBEDDED_IMAGE_SIZES = (8, 256)  # the --image-size range for the embedded sets


@dataclasses.dataclass(frozen=True)
class DataSource:
    """A dataset split: ``examples(indices) -> (images [n, H, W, C] float32 in [0, 1], labels [n])``."""

    name: str
    size: int
    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

    def check_indices(self, indices: Sequence[int]) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = indices[(indices < 0) | (indices >= self.size)]
        if bad.size:
            raise DLGInputError(
                f"index {int(bad[0])} is outside dataset {self.name!r}; allowed: 0 to {self.size - 1}"
            )
        return indices

    def examples(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        indices = self.check_indices(indices)
        images, labels = self.read(indices)
        return images.astype(np.float32), labels.astype(np.int32)


@functools.cache
def _embedded_arrays() -> dict[str, np.ndarray]:
    with resources.files("dlg_jax.data").joinpath(EMBEDDED_FILE).open("rb") as handle:
        with np.load(handle) as npz:
            return {key: npz[key] for key in npz.files}


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """``image [H, W, C]`` uint8 -> ``[size, size, C]`` uint8 (PIL bilinear, antialiased when shrinking)."""
    from PIL import Image

    if image.shape[:2] == (size, size):
        return image
    channels = image.shape[-1]
    picture = Image.fromarray(image[..., 0] if channels == 1 else image)
    return np.asarray(picture.resize((size, size), Image.Resampling.BILINEAR)).reshape(size, size, channels)


def check_embedded_image_size(image_size) -> int:
    """``image_size`` for an embedded set: an integer in :data:`EMBEDDED_IMAGE_SIZES` (their sources are
    25-32 pixels wide: larger sizes only interpolate, smaller ones lose the content)."""
    low, high = EMBEDDED_IMAGE_SIZES
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not low <= image_size <= high:
        raise DLGInputError(f"image size for an embedded dataset must be an integer from {low} to {high}, "
                            f"got {image_size!r}")
    return int(image_size)


def embedded_source(name: str, image_size: int | None = None) -> DataSource:
    """Embedded set ``name``; ``image_size=S`` resizes every image to ``S x S`` (:func:`resize_image`:
    up-sampling above the stored 32x32 / 28x28 adds pixels, not detail)."""
    check_choice("dataset", name, EMBEDDED_NAMES)
    arrays = _embedded_arrays()
    images, labels = arrays[f"{name}_images"], arrays[f"{name}_labels"]
    class_names = tuple(str(c) for c in arrays[f"{name}_class_names"])
    shape = tuple(images.shape[1:])
    if image_size is not None:
        image_size = check_embedded_image_size(image_size)
        shape = (image_size, image_size, shape[-1])

    def read(idx):
        picked = images[idx] if image_size is None else np.stack([resize_image(im, image_size) for im in images[idx]])
        return picked / np.float32(255.0), labels[idx]

    return DataSource(
        name=name,
        size=len(images),
        input_shape=shape,
        num_classes=len(class_names),
        class_names=class_names,
        read=read,
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")


def _folder_arrays(path: str, image_size: int | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images ``[N, H, W, C]`` uint8, labels ``[N]`` and class names of a folder ``path/<class>/<image>``
    (classes in sorted order, images in sorted order within a class). Greyscale images give ``C = 1``
    unless any image has colour (then all are RGB; alpha is dropped)."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(entry.name for entry in os.scandir(path) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DLGInputError(f"image folder {path!r} has no class sub-folders; expected {path}/<class>/<image>.png")
    pictures, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(path, name)) if f.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise DLGInputError(f"class folder {os.path.join(path, name)!r} holds no images "
                                f"({', '.join(IMAGE_SUFFIXES)})")
        for file in files:
            where = os.path.join(path, name, file)
            try:
                with Image.open(where) as picture:
                    picture.load()
                    pictures.append((where, picture.copy()))
            except (OSError, UnidentifiedImageError) as error:
                raise DLGInputError(f"cannot read image {where!r}: {str(error).splitlines()[0]}") from None
            labels.append(label)
    colour = any(picture.mode not in ("1", "L", "I", "I;16", "F") for _, picture in pictures)
    arrays = []
    for where, picture in pictures:
        array = np.asarray(picture.convert("RGB" if colour else "L"), np.uint8)
        arrays.append(array if colour else array[..., None])
        if image_size is None and arrays[-1].shape != arrays[0].shape:
            raise DLGInputError(f"image {where!r} is {arrays[-1].shape[1]}x{arrays[-1].shape[0]}, "
                                f"{pictures[0][0]!r} {arrays[0].shape[1]}x{arrays[0].shape[0]}; give an image size "
                                "to resize them all")
    return np.stack(_resized(arrays, image_size)), np.asarray(labels, np.int32), tuple(classes)


def _resized(images, image_size: int | None) -> list[np.ndarray]:
    if image_size is None:
        return list(images)
    image_size = check_positive_int("image size", image_size)
    return [resize_image(image, image_size) for image in images]


def _npz_arrays(path: str, image_size: int | None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Images ``[N, H, W, C]`` uint8 and labels ``[N]`` of an ``.npz`` with ``x`` (``[N, H, W]`` or
    ``[N, H, W, C]``, C in 1, 3; uint8 0..255 or floats in [0, 1]) and ``y`` (``[N]`` integers >= 0)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as error:
        raise DLGInputError(f"cannot read data file {path!r}: {str(error).splitlines()[0]}") from None
    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise DLGInputError(f"data file {path!r} lacks the array {missing[0]!r}; expected x [N, H, W, C] images "
                            f"and y [N] labels, found {', '.join(sorted(arrays)) or 'no arrays'}")
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise DLGInputError(f"x in {path!r} must be [N, H, W] or [N, H, W, C] images with C 1 or 3 and N >= 1, "
                            f"got shape {x.shape}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DLGInputError(f"y in {path!r} must be [{len(x)}] integer labels >= 0, got shape {y.shape} {y.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        if not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise DLGInputError(f"x in {path!r} holds floats outside [0, 1]; give uint8 0..255 or floats in [0, 1]")
        x = to_uint8(x)
    elif x.dtype != np.uint8:
        raise DLGInputError(f"x in {path!r} must be uint8 or float images, got {x.dtype}")
    classes = tuple(str(c) for c in range(int(y.max()) + 1))
    return np.stack(_resized(x, image_size)), y.astype(np.int32), classes


def file_source(path: str | os.PathLike, image_size: int | None = None) -> DataSource:
    """One's own images as a :class:`DataSource`: a folder ``path/<class>/<image>`` (classes: the sorted
    sub-folder names; PNG, JPEG, ... read with PIL) or an ``.npz`` file with ``x`` and ``y``
    (:func:`_npz_arrays`). ``image_size=S`` resizes every image to ``S x S`` as the embedded sets
    (:func:`resize_image`); without it a folder's images must all have one size. Everything is read once,
    here; a bad file raises :class:`DLGInputError` naming it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        images, labels, classes = _folder_arrays(path, image_size)
    elif path.endswith(".npz") and os.path.isfile(path):
        images, labels, classes = _npz_arrays(path, image_size)
    else:
        raise DLGInputError(f"dataset {path!r} is neither an image folder nor an existing .npz file")

    def read(idx):
        return images[idx] / np.float32(255.0), labels[idx]

    return DataSource(name=path, size=len(images), input_shape=tuple(images.shape[1:]),
                      num_classes=len(classes), class_names=classes, read=read)


def is_data_path(name: str) -> bool:
    """Whether the dataset ``name`` names one's own files (a folder or an ``.npz``) rather than a set."""
    return isinstance(name, (str, os.PathLike)) and (os.fspath(name).endswith(".npz") or os.path.isdir(name)
                                                     or os.sep in os.fspath(name))


def dataset_names() -> tuple[str, ...]:
    from dlg_jax.data.tfds_data import TFDS_NAMES

    return EMBEDDED_NAMES + TFDS_NAMES


def get_dataset(name: str, *, split: str | None = None, data_dir: str | os.PathLike | None = None,
                image_size: int | None = None) -> DataSource:
    """The :class:`DataSource` called ``name`` (an embedded set, or a tfds set prepared in ``data_dir``),
    or one's own images at the path ``name`` (:func:`file_source`)."""
    if name not in dataset_names() and is_data_path(name):
        if split is not None or data_dir is not None:
            raise DLGInputError(f"dataset {os.fspath(name)!r} is a path; it takes no split or data_dir")
        return file_source(name, image_size)
    check_choice("dataset", name, dataset_names())
    if name in EMBEDDED_NAMES:
        if split not in (None, "train"):
            raise DLGInputError(f"unknown split {split!r} for embedded dataset {name!r}; allowed: train")
        if data_dir is not None:
            raise DLGInputError(f"embedded dataset {name!r} takes no data_dir")
        return embedded_source(name, image_size)
    from dlg_jax.data.tfds_data import tfds_source

    return tfds_source(name, split=split, data_dir=data_dir, image_size=image_size)


# ---------------------------------------------------------------------------------------------------
# Building the embedded file (needs scikit-image and scikit-learn, in the ``dev`` extra).

COLOUR_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "stereo_motorcycle", "china", "flower")


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Images in [0, 1] (clipped) to uint8 0..255, rounded to nearest."""
    return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _colour_crops(photo: np.ndarray) -> list[np.ndarray]:
    """The centred square (1 crop) and a 3x3 grid of half-size squares over it (9 crops), at 32x32."""
    from skimage.transform import resize

    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = photo[top:top + side, left:left + side] / 255.0
    crops = [square]
    half, step = side // 2, side // 4
    for row in range(3):
        for col in range(3):
            crops.append(square[row * step:row * step + half, col * step:col * step + half])
    return [to_uint8(resize(c, (32, 32, 3), order=1, anti_aliasing=True)) for c in crops]


def build_embedded_arrays() -> dict[str, np.ndarray]:
    """Rebuild the arrays of ``embedded_data.npz`` from the images scikit-image and scikit-learn ship."""
    import skimage.data
    from skimage.transform import resize
    from sklearn.datasets import load_digits, load_sample_images

    samples = load_sample_images()
    sample_photos = {os.path.splitext(os.path.basename(f))[0]: im
                     for f, im in zip(samples.filenames, samples.images)}
    photos = []
    for name in COLOUR_PHOTOS:
        photo = sample_photos[name] if name in sample_photos else getattr(skimage.data, name)()
        photos.append(photo[0] if isinstance(photo, tuple) else photo)
    crops = [_colour_crops(photo) for photo in photos]  # [photo][crop]
    colour_images = np.stack([crops[p][c] for c in range(10) for p in range(10)])
    colour_labels = np.tile(np.arange(10), 10)

    digits = load_digits()
    digit_images = np.stack([
        np.pad(resize(d / 16.0, (20, 20), order=1, anti_aliasing=False), 4) for d in digits.images[:200]
    ])[..., None]
    faces = skimage.data.lfw_subset()  # [200, 25, 25]: 100 faces then 100 non-faces
    order = np.stack([np.arange(100), np.arange(100, 200)], axis=1).reshape(-1)
    face_images = np.stack([resize(faces[i], (32, 32), order=1, anti_aliasing=False) for i in order])[..., None]
    return {
        "colour_images": colour_images, "colour_labels": colour_labels.astype(np.int32),
        "colour_class_names": np.array(COLOUR_PHOTOS),
        "digits_images": to_uint8(digit_images), "digits_labels": digits.target[:200].astype(np.int32),
        "digits_class_names": np.array([str(d) for d in range(10)]),
        "faces_images": to_uint8(face_images), "faces_labels": (order >= 100).astype(np.int32),
        "faces_class_names": np.array(["face", "non-face"]),
    }


if __name__ == "__main__":  # python -m dlg_jax.data.datasets: rewrite the embedded file
    import io

    from dlg_jax.files import atomic_write_bytes

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **build_embedded_arrays())
    target = os.path.join(os.path.dirname(__file__), EMBEDDED_FILE)
    atomic_write_bytes(target, buffer.getvalue())
    print(f"wrote {target} ({len(buffer.getvalue()) / 1e3:.0f} kB)")
