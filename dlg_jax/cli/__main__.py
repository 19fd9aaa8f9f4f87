"""``python -m dlg_jax.cli``: the ``dlg-jax`` command."""

import sys

from dlg_jax.cli.main import main

sys.exit(main())
