"""Images and text: the embedded sets and user files (:mod:`~dlg_jax.data.datasets`), tensorflow-datasets
(:mod:`~dlg_jax.data.tfds_data`), the stored WordPiece vocabulary (:mod:`~dlg_jax.data.vocabulary`)."""

from dlg_jax.data.datasets import get_dataset

__all__ = ["get_dataset"]
