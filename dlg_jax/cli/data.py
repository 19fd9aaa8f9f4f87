"""``dlg-jax data prepare NAME``: download and prepare a tensorflow-datasets set for ``attack --dataset``."""


def register(subparsers):
    from dlg_jax.data.tfds_data import TFDS_NAMES

    parser = subparsers.add_parser("data", help="prepare tensorflow-datasets sets",
                                   description="Manage the tensorflow-datasets sets that --dataset reads.")
    actions = parser.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prepare = actions.add_parser(
        "prepare", help="download and prepare a dataset (needs TensorFlow: pip install 'dlg-jax[prepare]')",
        description="Download a dataset (or take the files from --manual-dir) and write it as ArrayRecord "
                    "files that attacks then read by index without TensorFlow.")
    prepare.add_argument("name", metavar="NAME", help=f"one of: {', '.join(TFDS_NAMES)}")
    prepare.add_argument("--data-dir", default=None,
                         help="where to write it (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    prepare.add_argument("--manual-dir", default=None,
                         help="folder holding files downloaded by hand (for machines without internet, or "
                              "datasets whose files cannot be downloaded automatically)")
    prepare.set_defaults(handler=run_prepare)
    return parser


def run_prepare(args) -> int:
    from dlg_jax.data.tfds_data import prepare_dataset

    path = prepare_dataset(args.name, data_dir=args.data_dir, manual_dir=args.manual_dir)
    print(f"prepared {args.name} in {path}")
    return 0
