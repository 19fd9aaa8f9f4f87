"""One's own images: a folder with one sub-folder per class, or an .npz with x and y."""

import numpy as np
import pytest
from PIL import Image

from dlg_jax import DLGInputError, get_dataset
from dlg_jax.cli import main


def _folder(root, sizes=((12, 10), (12, 10), (12, 10)), mode="RGB"):
    rng = np.random.default_rng(0)
    pictures = {}
    for i, (cls, size) in enumerate(zip(("cat", "ant", "cat"), sizes)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
        array = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(array, mode).save(root / cls / f"{i}.png")
        pictures[(cls, f"{i}.png")] = array
    return pictures


def test_image_folder_classes_are_sorted_subfolders(tmp_path):
    pictures = _folder(tmp_path / "data")
    source = get_dataset(str(tmp_path / "data"))
    assert source.class_names == ("ant", "cat") and source.size == 3 and source.input_shape == (10, 12, 3)
    images, labels = source.examples([0, 1, 2])
    assert labels.tolist() == [0, 1, 1]
    np.testing.assert_array_equal(np.round(images[0] * 255).astype(np.uint8), pictures[("ant", "1.png")])
    resized = get_dataset(str(tmp_path / "data"), image_size=16)
    assert resized.input_shape == (16, 16, 3)


def test_npz_with_x_and_y_float_or_uint8(tmp_path):
    x = np.random.default_rng(1).random((5, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 2, 1, 2, 0]))
    source = get_dataset(str(tmp_path / "d.npz"))
    assert source.input_shape == (8, 8, 1) and source.num_classes == 3
    images, _ = source.examples([1])
    np.testing.assert_allclose(images[0, ..., 0], x[1], atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("make,message", [
    (lambda p: np.savez(p / "d.npz", images=np.zeros((2, 4, 4)), y=np.zeros(2, int)), "lacks the array 'x'"),
    (lambda p: np.savez(p / "d.npz", x=np.zeros((2, 4, 4)), y=np.zeros(3, int)), "y in .* must be \\[2\\] integer"),
    (lambda p: np.savez(p / "d.npz", x=np.full((2, 4, 4), 3.0), y=np.zeros(2, int)), "floats outside \\[0, 1\\]"),
    (lambda p: (p / "d.npz").write_bytes(b"not a zip"), "cannot read data file"),
])
def test_bad_npz_files(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DLGInputError, match=message):
        get_dataset(str(tmp_path / "d.npz"))


def test_bad_image_folders(tmp_path):
    _folder(tmp_path / "mixed", sizes=((12, 10), (12, 10), (9, 9)))
    with pytest.raises(DLGInputError, match=r"is 9x9, .* 12x10; give an image size"):
        get_dataset(str(tmp_path / "mixed"))
    assert get_dataset(str(tmp_path / "mixed"), image_size=8).input_shape == (8, 8, 3)
    _folder(tmp_path / "broken")
    (tmp_path / "broken" / "ant" / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DLGInputError, match=r"cannot read image '.*bad.png'"):
        get_dataset(str(tmp_path / "broken"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DLGInputError, match="no class sub-folders"):
        get_dataset(str(tmp_path / "empty"))


def test_cli_attacks_a_folder_and_refuses_a_bad_file(tmp_path, capsys):
    _folder(tmp_path / "data", mode="L")
    out = tmp_path / "out"
    argv = ["attack", "--iterations", "10", "--restarts", "1", "--quiet", "--out", str(out)]
    assert main([*argv, "--dataset", str(tmp_path / "data"), "--image-size", "16"]) == 0
    assert (out / "metrics.json").exists()
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 4, 4)))
    capsys.readouterr()
    assert main([*argv, "--dataset", str(tmp_path / "bad.npz"), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "lacks the array 'y'" in err and err.count("\n") == 1
    assert not list((tmp_path / "bad").glob("*"))  # nothing written
