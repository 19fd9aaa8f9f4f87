"""A small BERT-style encoder with a masked-language-model head (Devlin et al. 2019), pure-functional.

The attacked input of a text model is the sequence of *word embeddings* ``x [B, L, E]`` (the rows of
the word-embedding table ``W_emb [V, E]`` picked by the token ids), so that the same gradient-matching
engine that optimises images optimises continuous dummy embeddings. The word-embedding table is
therefore kept apart from the encoder's parameters (:func:`init_text_weights` returns both); the
victim's lookup ``x = W_emb[ids]`` happens outside the module (:mod:`dlg_jax.text`).

``BertMLM(x)`` for ``x [B, L, E]`` with ``L <= max_length``:

    h_0 = LayerNorm(x + P[:L])                                  P [max_length, E] position embeddings
    h_i = LayerNorm(a + MLP(a)),  a = LayerNorm(h_{i-1} + SelfAttention(h_{i-1}))     (post-LN, depth times)
    u   = LayerNorm(act(h_depth[:, masked] Wt + bt))            BERT's MLM transform, masked [M] positions
    logits = u Wd + bd                                          [B, M, V] (decoder not tied to W_emb)

``MLP(a) = act(a W1 + b1) W2 + b2`` with hidden width ``4 E``; attention has ``heads`` heads over the
full sequence (no padding mask: a shorter sentence of a batch is padded with ``[PAD]`` tokens it attends to). ``act`` must be twice differentiable for
DLG (its objective differentiates the gradient): ``gelu`` (tanh form, default), ``tanh`` or
``sigmoid``; never ReLU. Initialisation: embeddings N(0, 1) (PyTorch's ``nn.Embedding``), dense
kernels LeCun normal, biases 0, LayerNorm scale 1 and offset 0.

The masked positions are part of the model (static): the logits are computed at those ``M`` positions
only, as BERT's loss uses them only. The victim's loss on soft targets ``t [B, M, V]`` is then
:func:`dlg_jax.victim.gradients.soft_cross_entropy`, the mean over ``B`` and ``M`` of the cross-entropy: BERT's
MLM loss.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlg_jax.errors import DLGInputError, check_choice, check_positive_int

TEXT_ACTIVATIONS = {"gelu": nn.gelu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid}
# name -> (depth, width, heads): encoder layers, embedding width E, attention heads
TEXT_MODELS = {"bert-tiny": (1, 32, 2), "bert-small": (2, 64, 4), "bert-medium": (4, 128, 4)}
DEFAULT_TEXT_MODEL = "bert-small"
MAX_LENGTH = 64  # position embeddings; a model option (--max-length), e.g. 128


class _EncoderLayer(nn.Module):
    width: int
    heads: int
    activation: str

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        attended = nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.width,
                                                   out_features=self.width, deterministic=True)(h, h)
        h = nn.LayerNorm()(h + attended)
        hidden = TEXT_ACTIVATIONS[self.activation](nn.Dense(4 * self.width)(h))
        return nn.LayerNorm()(h + nn.Dense(self.width)(hidden))


class BertMLM(nn.Module):
    """Word embeddings ``[B, L, E]`` -> MLM logits ``[B, M, V]`` at ``masked_positions`` (see module doc)."""

    vocab_size: int
    masked_positions: tuple[int, ...]
    depth: int = 2
    width: int = 64
    heads: int = 4
    max_length: int = MAX_LENGTH
    activation: str = "gelu"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        positions = self.param("position_embeddings", nn.initializers.normal(1.0), (self.max_length, self.width))
        h = nn.LayerNorm()(x + positions[: x.shape[1]].astype(x.dtype))
        for _ in range(self.depth):
            h = _EncoderLayer(self.width, self.heads, self.activation)(h)
        h = h[:, jnp.asarray(self.masked_positions)]
        h = nn.LayerNorm()(TEXT_ACTIVATIONS[self.activation](nn.Dense(self.width)(h)))
        return nn.Dense(self.vocab_size, name="decoder")(h)


class BagWeightsMLM(nn.Module):
    """:class:`BertMLM` on *token weights* over a bag of ``n`` tokens instead of free embeddings: the
    attack's dummy for text when the bag of input tokens is known (the non-zero rows of ``dW_emb``).

    ``w [B, L, n] -> x = w T / sqrt(n)`` with ``T [n, E]`` (the parameter ``bag_embeddings``: the bag's rows
    of ``W_emb``); positions ``fixed_positions`` take the rows ``fixed_rows`` of ``T`` instead (``[CLS]``,
    ``[MASK]``: known to the attacker), then ``encoder(x)``. For one-hot ``w`` (times ``sqrt(n)``) this is
    the victim's lookup, and the gradient of the loss in ``T`` is ``sum_{b,l} w_bl u_bl / sqrt(n)`` with
    ``u_bl = dloss/dx_bl``: the bag's rows of ``dW_emb``, which the attack then matches as well (``n E``
    more equations than the encoder's gradient gives). ``w`` is not constrained to the simplex: a softmax
    saturates and L-BFGS stalls on it.

    ``label_tokens`` (sorted token ids, ``k`` of them; ``None``: all ``V`` classes): the masked slots' labels
    restricted to those tokens (the bag read off the decoder's bias gradient). The output is then
    ``[log p_v for v in label_tokens, log sum_{v not in label_tokens} p_v]`` (``k + 1`` classes, ``p`` the
    model's softmax): its log-softmax is itself, so the cross-entropy of a target on the ``k`` tokens is
    the full model's, and so is its gradient in every weight."""

    encoder: BertMLM
    bag_size: int
    fixed_positions: tuple[int, ...] = ()
    fixed_rows: tuple[int, ...] = ()
    label_tokens: tuple[int, ...] | None = None

    @nn.compact
    def __call__(self, w: jnp.ndarray) -> jnp.ndarray:
        rows = self.param("bag_embeddings", nn.initializers.normal(1.0), (self.bag_size, self.encoder.width))
        rows = rows.astype(w.dtype)
        x = w @ rows / jnp.sqrt(jnp.asarray(self.bag_size, w.dtype))
        if self.fixed_positions:
            x = x.at[:, jnp.asarray(self.fixed_positions)].set(rows[jnp.asarray(self.fixed_rows)])
        logits = self.encoder(x)
        if self.label_tokens is None:
            return logits
        log_p = jax.nn.log_softmax(logits, -1)
        tokens = jnp.asarray(self.label_tokens)
        others = jnp.ones(log_p.shape[-1], bool).at[tokens].set(False)
        rest = jax.nn.logsumexp(jnp.where(others, log_p, -jnp.inf), -1, keepdims=True)
        return jnp.concatenate([log_p[..., tokens], rest], -1)


def build_text_model(name: str, sequence_length: int, masked_positions, vocab_size: int, *,
                     activation: str = "gelu", max_length: int = MAX_LENGTH):
    """A :class:`~dlg_jax.models.Model` for sentences of ``sequence_length`` tokens whose
    ``masked_positions`` (sorted, distinct, in ``0..L-1``) are masked: ``input_shape = (L, E)``,
    ``num_classes = vocab_size``, ``label_axes = (M,)``, ``modality = "text"``."""
    from dlg_jax.models import Model

    if name not in TEXT_MODELS:
        raise DLGInputError(f"model {name!r} is not a text model; text models: {', '.join(TEXT_MODELS)}")
    check_choice("text activation", activation, TEXT_ACTIVATIONS)
    check_positive_int("max_length", max_length)
    length = check_positive_int("sequence length", sequence_length)
    if length > max_length:
        raise DLGInputError(f"sequence length {length} exceeds the model's max_length {max_length}")
    masked = tuple(int(p) for p in masked_positions)
    if not masked or list(masked) != sorted(set(masked)) or masked[0] < 0 or masked[-1] >= length:
        raise DLGInputError(f"masked positions must be distinct, sorted and in 0..{length - 1}, got {masked!r}")
    depth, width, heads = TEXT_MODELS[name]
    module = BertMLM(int(vocab_size), masked, depth, width, heads, int(max_length), activation)
    return Model(name, module, (length, width), int(vocab_size), label_axes=(len(masked),), modality="text")


def init_text_weights(model, key: jax.Array, dtype=jnp.float32) -> tuple[jnp.ndarray, Any]:
    """``(W_emb [V, E] ~ N(0, 1), encoder params)`` of a text model built by :func:`build_text_model`."""
    return _init_text_weights(model, key, jnp.dtype(dtype))


@jax.jit(static_argnums=(0, 2))
def _init_text_weights(model, key, dtype):
    embedding_key, encoder_key = jax.random.split(key)
    embeddings = jax.random.normal(embedding_key, (model.num_classes, model.input_shape[-1]), dtype)
    return embeddings, model.init(encoder_key, dtype)
