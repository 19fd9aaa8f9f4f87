"""JAX vs PyTorch benchmarks for dlg-jax; each module runs as ``python -m benchmarks.<name> [--quick]``.

- ``objective_throughput``: restart-evaluations/s of the matching loss and its gradient (LeNet).
- ``attack_throughput``: restart-iterations/s of the full attack, every JAX solver vs ``torch.optim.LBFGS``,
  and the JAX attack vs its own lockstep algorithm written in PyTorch.
- ``time_to_recovery``: wall time and success rate to reconstruct ``T`` images (PSNR >= 30 dB).
- ``scaling``: objective throughput for LeNet and ResNet-20 at batch sizes 1-8.
- ``summary``: the headline ratios against the project's targets, as JSON and a markdown table.

``torch_reference`` is DLG written the canonical PyTorch way (the baseline); ``common`` holds the
timing, environment and output helpers. Results go to ``benchmarks/results/<name>.json`` (+ ``.png``).
"""
