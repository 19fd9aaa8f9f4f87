"""Figures: :func:`subplots` (matplotlib without pyplot) and an attack's figures, the reconstruction grid and the
convergence plot."""

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from dlg_jax.files import atomic_save_figure


def subplots(rows: int = 1, columns: int = 1, *, figsize: tuple[float, float], dpi: int = 100, **kwargs):
    """A figure and its axes (``Figure.subplots(rows, columns, **kwargs)``), made without pyplot: no backend is
    chosen or changed, so a notebook that imports this package keeps its own; the figure is saved by
    :func:`dlg_jax.files.atomic_save_figure` and freed with its last reference."""
    figure = Figure(figsize=figsize, dpi=dpi)
    return figure, figure.subplots(rows, columns, **kwargs)


def _show(axis, image: np.ndarray, title: str | None = None) -> None:
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
    else:
        axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])
    if title:
        axis.set_title(title, fontsize=7)


def reconstruction_grid(path, truths, snapshots, snapshot_iterations, finals, assignment, slot_psnr,
                        max_rows: int = 12) -> None:
    """One row per private image (``truths [T, B, H, W, C]``): the ground truth, the best restart's
    snapshots ``[T, S, B, H, W, C]`` (uint8), each titled with the iteration it shows
    (``snapshot_iterations [T, S]``), and its final reconstruction ``finals [T, B, H, W, C]``; slots are
    shown in the optimal ``assignment [T, B]`` order. Snapshot columns that every shown target reached
    only after stopping (copies of the final image) are left out."""
    rows = [(t, b) for t in range(truths.shape[0]) for b in range(truths.shape[1])][:max_rows]
    targets = sorted({t for t, _ in rows})
    shown = np.asarray(snapshot_iterations)[targets]
    keep = [s for s in range(shown.shape[1]) if s == 0 or np.any(shown[:, s] > shown[:, s - 1])]
    columns = 2 + len(keep)
    figure, axes = subplots(len(rows), columns, figsize=(1.1 * columns, 1.35 * len(rows)), squeeze=False,
                                dpi=120)
    for row, (t, b) in enumerate(rows):
        slot = assignment[t, b]
        _show(axes[row, 0], truths[t, b], "ground truth" if row == 0 else None)
        for column, s in enumerate(keep):
            _show(axes[row, 1 + column], snapshots[t, s, slot] / 255.0, f"iter {snapshot_iterations[t][s]}")
        _show(axes[row, -1], finals[t, slot], f"final {slot_psnr[t, b]:.1f} dB")
    atomic_save_figure(path, figure)


def convergence_plot(path, loss_history: np.ndarray, best_restart: np.ndarray, max_targets: int = 8) -> None:
    """Objective vs iteration: every restart thin, each target's best restart bold (``[T, R, I]``)."""
    figure, axis = subplots(figsize=(6, 4), dpi=120)
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for t in range(min(loss_history.shape[0], max_targets)):
        colour = colours[t % len(colours)]
        for r in range(loss_history.shape[1]):
            bold = r == best_restart[t]
            axis.plot(np.arange(1, loss_history.shape[2] + 1), np.maximum(loss_history[t, r], 1e-30),
                      color=colour, lw=1.6 if bold else 0.4, alpha=1.0 if bold else 0.35,
                      label=f"target {t} (best restart {r})" if bold else None)
    axis.set_yscale("log")
    axis.set_xlabel("iteration")
    axis.set_ylabel("gradient-matching objective")
    axis.set_title("DLG convergence (thin: every restart, bold: best)")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    atomic_save_figure(path, figure)

