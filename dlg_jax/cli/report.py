"""``dlg-jax report STORE``: tables and plots of a results store (success rate vs batch size, defense
strength and model; throughput per device) -> report.md and four PNGs in --out."""

import os

from dlg_jax.cli.options import plain


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="tables and plots of a results store",
                                   description=plain(__doc__.split("\n\n")[0]))
    parser.add_argument("store", help="results store directory (written by dlg-jax sweep)")
    parser.add_argument("--out", default=None, help="output directory (default: STORE/report)")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from dlg_jax.errors import DLGInputError
    from dlg_jax.experiments.report import write_report
    from dlg_jax.experiments.store import Store
    from dlg_jax.files import prepare_output_dir

    store = Store(args.store, create=False)
    rows = store.rows()
    if not rows:
        raise DLGInputError(f"store {store.path!r} holds no finished points yet")
    rows = [row for row in rows if row.get("psnr") is not None]  # image attacks (text points: their study's page)
    if not rows:
        raise DLGInputError(f"store {store.path!r} holds no image-attack rows (a training store, or text only?)")
    out = prepare_output_dir(args.out or os.path.join(store.path, "report"))
    print(write_report(rows, out, f"Results store {store.path}"))
    print(f"report: {os.path.join(out, 'report.md')} and figures in {out}")
    return 0
