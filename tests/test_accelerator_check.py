"""``python -m benchmarks.accelerator --quick`` on the CPU: every row runs and the two sides agree."""

import json

import pytest

pytest.importorskip("torch")

from benchmarks import accelerator  # noqa: E402


def test_accelerator_check_runs_on_cpu_and_writes_its_table(tmp_path, capsys):
    assert accelerator.main(["--quick", "--repeats", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "accelerator-cpu.json").read_text())
    assert [row["row"] for row in result["attacks"]] == [
        "default attack", "precision default", "precision highest", "large attack"]
    for row in result["attacks"]:
        assert row["restart_iterations_per_second"] > 0 and 0 <= row["recovered"] <= row["targets"]
    # on a CPU the precision setting cannot change the numbers: both rows are the same attack
    default, highest = result["attacks"][1:3]
    assert default["psnr_mean"] == pytest.approx(highest["psnr_mean"], abs=1e-3)
    objective = result["objective"]["8"]
    assert objective["jax-reverse_over_forward"]["max_relative_difference_vs_torch"] < 1e-4
    assert objective["torch-func"]["restart_evaluations_per_second"] > 0
    assert result["torch_dlg"]["eager"]["evaluations"] > 0
    assert result["precision"]["jax"]["default_matmul_precision"] == "highest"
    assert "| objective at R = 8" in capsys.readouterr().out


def test_cuda_asked_of_a_cpu_pytorch_is_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this PyTorch has CUDA")
    assert accelerator.main(["--quick", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("python -m benchmarks.accelerator: error: device 'cuda' asked")
