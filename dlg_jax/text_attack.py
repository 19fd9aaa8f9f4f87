"""DLG on text: recover a sentence from the gradient of one masked-language-model step of a BERT-style model.

**The victim** (one sentence per shared gradient): the text becomes ``[CLS] tokens... [SEP]`` (ids
``s [L]``, :mod:`dlg_jax.vocabulary`); ``M = max(1, round(0.15 (L - 2)))`` of the ``L - 2`` word
positions (BERT's 15%) are masked: their input id becomes ``[MASK]`` and their original ids are the
labels ``y [M]`` (all selected positions become ``[MASK]``; BERT's 10% random / 10% unchanged split is
not used). The client shares ``dW = grad_W loss`` for ``W = (W_emb, encoder)``, the loss being
:func:`dlg_jax.victim.batch_loss` of the encoder (:mod:`dlg_jax.models.bert`) on the embeddings
``W_emb[input ids]`` with one-hot targets at the masked positions.

**What the attacker knows**: the weights ``W`` and the shared gradient ``dW``, the sequence length ``L``
and which positions were masked (the masking is drawn from ``(seed, L)`` by :func:`masked_positions`,
as a server that seeds the clients' masking would know). Not the tokens.

**The attack** runs the one engine, :func:`dlg_jax.attack.run_attack`: the dummy is continuous word
embeddings ``x' [1, L, E] ~ N(0, 1)`` (the engine's ``images``) matched on the encoder's gradient
(``dW`` without ``dW_emb``: the dummy has no lookup) with L-BFGS, all restarts and sentences of one
length vmapped together. The labels:

- ``bias`` (default; iDLG's idea for MLM): the decoder bias gradient is
  ``db = (1/M) sum_m (softmax(logits_m) - onehot(y_m))``, so the masked tokens are the entries of
  ``M (q - db)`` near 1 (:func:`dlg_jax.labels.count_labels`, ``q`` the model's mean prediction on N(0, 1)
  embeddings). Their order over the masked positions is unknown: each distinct ordering is one more
  target of the same vmapped run, and the ordering whose best restart matches ``dW`` best wins.
- ``joint`` (DLG's): dummy label logits ``[1, M, V]`` optimised with the embeddings; the label is their
  argmax.

**Decoding**: every position's token is its nearest vocabulary embedding; ``[CLS]`` and ``[SEP]`` are
put at the ends (BERT's input format, known to the attacker) and masked positions take the recovered
labels. The first LayerNorm cannot see a constant shift of an embedding along ``(1, ..., 1)`` (it
subtracts the mean over ``E``), so the gradient does not determine it either and the distance is taken
between mean-centred vectors. With ``restrict=True`` (default) the candidates are the rows of
``dW_emb`` that are not zero: the bag of input tokens (``[CLS]``, ``[SEP]``, ``[MASK]`` and every
unmasked word), at most ``L`` of the ``V`` tokens.

**Refinement** (``refine=True``, default): tokens are discrete, so the attacker can check a candidate
sentence exactly: :func:`refine_tokens` greedily applies the single change (one position set to one of
``K`` candidates: the bag's tokens, or without the bag each position's ``K`` nearest tokens, ``K`` = the
bag's size; or two positions swapped) that most lowers the distance between the candidate's full
gradient (``dW_emb`` included) and ``dW``, until none helps or the distance is at most
``REPRODUCED * ||dW||^2``, i.e. the candidate reproduces the shared gradient. With the bag this turns a
nearly right continuous solution into the exact sentence; the reported ``distance`` certifies it.

Scores (over the ``L - 2`` word positions, masked ones included): token accuracy, exact match, BLEU
(``sacrebleu``, sentence level) and ROUGE-1/ROUGE-L F1 (``rouge-score``) of the decoded text.
"""

import dataclasses
import functools
import itertools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax import vocabulary
from dlg_jax.attack import AttackConfig, AttackResult, Progress, run_attack
from dlg_jax.errors import DLGInputError, check_choice
from dlg_jax.labels import count_labels
from dlg_jax.models import Model
from dlg_jax.objectives import l2_distance
from dlg_jax.models.bert import (DEFAULT_TEXT_MODEL, MAX_LENGTH, TEXT_MODELS, build_text_model,
                                 init_text_weights)
from dlg_jax.victim import batch_loss, one_hot

MASK_RATE = 0.15
TEXT_LABELS = ("bias", "joint")
REPRODUCED = 1e-6  # a token sequence whose gradient distance is <= this x ||dW||^2 reproduces the gradient


def text_attack_config(**overrides) -> AttackConfig:
    """The engine settings for text: DLG's (L-BFGS, l2, N(0, 1) dummies), 4 restarts, 300 iterations,
    reports at the 6 snapshots only (one compiled block size)."""
    settings = dict(restarts=4, iterations=300, snapshots=6, tolerance=1e-10)
    settings.update(overrides)
    if "block" not in overrides:
        settings["block"] = max(1, settings["iterations"] // max(1, settings["snapshots"] - 1))
    return AttackConfig(**settings)


def masked_positions(length: int, seed: int) -> tuple[int, ...]:
    """The ``M = max(1, round(0.15 (L - 2)))`` masked positions (sorted, in ``1..L-2``) of a sequence of
    ``L >= 3`` tokens, drawn from ``(seed, L)``."""
    if length < 3:
        raise DLGInputError(f"a sequence needs at least one word besides [CLS] and [SEP], got length {length}")
    count = max(1, int(round(MASK_RATE * (length - 2))))
    rng = np.random.default_rng([seed, length])
    return tuple(int(p) for p in np.sort(rng.choice(np.arange(1, length - 1), count, replace=False)))


def text_shared_gradients(model: Model, word_embeddings: jnp.ndarray, params: Any, input_ids: np.ndarray,
                          labels: np.ndarray) -> tuple[jnp.ndarray, Any]:
    """The shared gradients of ``T`` clients: ``input_ids [T, B, L]`` (masked), ``labels [T, B, M]`` give
    ``(dW_emb [T, V, E], encoder gradient with a leading T axis)``."""

    return _text_shared_gradients(model, word_embeddings, params, jnp.asarray(input_ids), jnp.asarray(labels))


def _gradients(model, word_embeddings, params, input_ids, labels):
    def one(ids, targets):
        def loss(table, encoder):
            return batch_loss(model, encoder, table[ids], one_hot(targets, model.num_classes, table.dtype))

        return jax.grad(loss, argnums=(0, 1))(word_embeddings, params)

    return jax.vmap(one)(input_ids, labels)


_text_shared_gradients = jax.jit(_gradients, static_argnums=0)


def bag_of_tokens(embedding_grad: np.ndarray) -> np.ndarray:
    """``[V]`` bool: the tokens whose row of ``dW_emb [V, E]`` is not all zero (the input's tokens)."""
    return np.any(np.asarray(embedding_grad) != 0, axis=-1)


def nearest_tokens(embeddings: np.ndarray, table: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
    """``[..., L]`` ids: for each ``embeddings[..., l, :]`` the vocabulary row of ``table [V, E]`` nearest
    in Euclidean distance after subtracting each vector's mean over ``E``; only ``candidates [V]`` (bool)
    when given."""
    distance = _centred_distances(embeddings, table)
    if candidates is not None:
        distance = np.where(np.asarray(candidates, bool), distance, np.inf)
    return np.argmin(distance, axis=-1)


def _nearest_k(embeddings: np.ndarray, table: np.ndarray, k: int) -> np.ndarray:
    """``[L, k]``: the ``k`` tokens nearest to each embedding (mean-centred, as :func:`nearest_tokens`)."""
    return np.argsort(_centred_distances(embeddings, table), axis=-1, kind="stable")[:, :k]


def _centred_distances(embeddings: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``[..., V]`` squared distances between ``embeddings [..., E]`` and the rows of ``table [V, E]``, each
    vector minus its mean over ``E``."""
    x = np.asarray(embeddings, np.float64)
    x = x - x.mean(-1, keepdims=True)
    w = np.asarray(table, np.float64)
    w = w - w.mean(-1, keepdims=True)
    return (x ** 2).sum(-1)[..., None] - 2 * x @ w.T + (w ** 2).sum(-1)


def _masked_token_orderings(bias_grad: np.ndarray, mean_prediction: np.ndarray, masked: int) -> list[tuple]:
    """Every distinct ordering of the masked tokens read off one decoder bias gradient ``[V]``."""
    tokens = count_labels(np.asarray(bias_grad, np.float64)[None], mean_prediction, masked)[0]
    return sorted(set(itertools.permutations(tokens.tolist())))


@jax.jit(static_argnums=(0, 2))
def _mean_prediction(model: Model, params: Any, count: int = 16) -> jnp.ndarray:
    """``q [V]``: the model's mean softmax over ``count`` N(0, 1) embedding sequences (fixed key)."""
    x = jax.random.normal(jax.random.key(0), (count, *model.input_shape), jax.tree.leaves(params)[0].dtype)
    return jnp.mean(jax.nn.softmax(model.apply(params, x), -1), axis=(0, 1))


def refine_tokens(distance_fn: Callable, ids: np.ndarray, fixed: Sequence[int], candidates: np.ndarray,
                  max_moves: int, tolerance: float = 0.0) -> tuple[np.ndarray, float]:
    """Greedy discrete search: from ``ids [L]``, repeatedly apply the single move (a position not in
    ``fixed`` set to one of its ``candidates [L, K]``, or two such positions swapped) that most lowers
    ``distance_fn(batch [N, L]) -> [N]``, until no move helps, the distance is at most ``tolerance`` (the
    gradient is reproduced) or after ``max_moves``. Returns the final ids and their distance."""
    free = [p for p in range(len(ids)) if p not in set(fixed)]
    ids = np.array(ids)
    current = np.inf
    for _ in range(max_moves + 1):
        trials = [ids]  # the current ids and every move, no-ops included: the batch shape stays fixed
        for p in free:
            for c in candidates[p]:
                trial = ids.copy()
                trial[p] = c
                trials.append(trial)
        for p, r in itertools.combinations(free, 2):
            trial = ids.copy()
            trial[[p, r]] = ids[[r, p]]
            trials.append(trial)
        values = np.asarray(distance_fn(np.stack(trials)))
        current = float(values[0])
        best = int(np.argmin(values))
        if not values[best] < current or current <= tolerance:
            break
        ids = trials[best]
    return ids, current


@functools.partial(jax.jit, static_argnums=(0, 1))
def _discrete_distances(model: Model, masked: tuple[int, ...], table, params, embedding_grad, grads, batch):
    """``[N]``: ``||grad_W loss(ids) - dW||^2`` over every parameter (``W_emb`` included) for each candidate
    sentence ``batch [N, L]``: its masked positions' tokens are the labels and ``[MASK]`` the input there.

    The ``W_emb`` part without the ``[V, E]`` gradient: with ``u_l = dloss/dx_l`` and input ids ``s``,
    ``dW_emb(s) = sum_l onehot(s_l) u_l``, so ``||dW_emb(s) - D||^2 = sum_{l,l'} [s_l = s_l'] <u_l, u_l'>
    - 2 sum_l <u_l, D[s_l]> + ||D||^2``."""
    positions = np.asarray(masked)
    weights = (1.0,) * len(jax.tree.leaves(grads))
    constant = jnp.vdot(embedding_grad, embedding_grad)

    def one(ids):
        inputs = ids.at[positions].set(vocabulary.MASK)
        targets = one_hot(ids[positions][None], model.num_classes, table.dtype)
        u, encoder = jax.grad(lambda x, p: batch_loss(model, p, x, targets), argnums=(0, 1))(table[inputs][None],
                                                                                           params)
        u = u[0]
        same = inputs[:, None] == inputs[None, :]
        embedding_part = jnp.sum(jnp.where(same, u @ u.T, 0.0)) - 2 * jnp.vdot(u, embedding_grad[inputs]) + constant
        return jnp.maximum(embedding_part, 0.0) + l2_distance(encoder, grads, weights)  # >= 0 up to rounding

    return jax.lax.map(one, batch, batch_size=32)


@dataclasses.dataclass
class SentenceResult:
    """One sentence: original and recovered ids ``[L]`` (decoded as the run asked), the masked positions,
    the decoded snapshots ``[S, L]`` at ``snapshot_iterations``, the continuous objective ``loss``, the
    shared gradient's ``||dW||^2`` and the scores of every decoding
    (``nearest`` / ``refined``, each over all tokens or the bag ``+bag``)."""

    text: str
    original: np.ndarray
    recovered: np.ndarray
    masked: tuple[int, ...]
    snapshots: np.ndarray
    snapshot_iterations: np.ndarray
    bag_size: int
    loss: float
    gradient_norm2: float
    scores: dict
    decodings: dict

    @property
    def recovered_text(self) -> str:
        return vocabulary.decode(self.recovered)


@dataclasses.dataclass
class TextAttackRun:
    sentences: list[SentenceResult]
    results: list[AttackResult]  # one engine run per sequence length
    model: str
    restrict: bool
    refine: bool
    labels: str

    def summary(self, decoding: str | None = None) -> dict:
        """Mean scores over the sentences, of the run's decoding or of ``decoding`` (a key of ``decodings``)."""
        rows = [s.scores if decoding is None else s.decodings[decoding]["scores"] for s in self.sentences]
        return {f"{key}_mean": float(np.mean([row[key] for row in rows])) for key in rows[0]}


def score(original: np.ndarray, recovered: np.ndarray) -> dict:
    """Token accuracy and exact match over the word positions ``1..L-2``, BLEU and ROUGE F1 of the texts."""
    import sacrebleu
    from rouge_score import rouge_scorer

    words = slice(1, len(original) - 1)
    hits = np.asarray(original)[words] == np.asarray(recovered)[words]
    reference, hypothesis = vocabulary.decode(original), vocabulary.decode(recovered)
    rouge = rouge_scorer.RougeScorer(["rouge1", "rougeL"]).score(reference, hypothesis)
    return {"token_accuracy": float(hits.mean()), "exact_match": float(hits.all()),
            "bleu": float(sacrebleu.sentence_bleu(hypothesis, [reference]).score),
            "rouge1": float(rouge["rouge1"].fmeasure), "rougeL": float(rouge["rougeL"].fmeasure)}


def attack_sentences(
    sentences: Sequence[str],
    model: str = DEFAULT_TEXT_MODEL,
    config: AttackConfig | None = None,
    *,
    restrict: bool = True,
    refine: bool = True,
    labels: str = "bias",
    activation: str = "gelu",
    max_length: int = MAX_LENGTH,
    progress: Callable[[Progress], None] | None = None,
) -> TextAttackRun:
    """Attack each sentence's shared MLM gradient (see the module doc); sentences of one length share
    one vmapped engine run. ``config.seed`` seeds the weights, the masking and the dummies."""
    config = text_attack_config() if config is None else config
    check_choice("text label strategy", labels, TEXT_LABELS)
    if model not in TEXT_MODELS:
        raise DLGInputError(f"model {model!r} is not a text model; text models: {', '.join(TEXT_MODELS)}")
    if config.labels != "joint":
        raise DLGInputError("give the text label strategy as labels='bias' or 'joint', not in the AttackConfig")
    if not sentences:
        raise DLGInputError("no sentences given; give at least one")
    encoded = [np.asarray(vocabulary.encode(text, max_length)) for text in sentences]
    vocab = vocabulary.vocab_size()
    out: list[SentenceResult | None] = [None] * len(sentences)
    results = []
    for length in sorted({len(ids) for ids in encoded}):
        group = [i for i, ids in enumerate(encoded) if len(ids) == length]
        masked = masked_positions(length, config.seed)
        net = build_text_model(model, length, masked, vocab, activation=activation, max_length=max_length)
        table, params = init_text_weights(net, jax.random.key(config.seed), jnp.dtype(config.dtype))
        originals = np.stack([encoded[i] for i in group])
        inputs = originals.copy()
        inputs[:, list(masked)] = vocabulary.MASK
        embedding_grads, grads = text_shared_gradients(net, table, params, inputs[:, None],
                                                       originals[:, None][..., list(masked)])
        if labels == "bias":
            q = np.asarray(_mean_prediction(net, params), np.float64)
            bias = np.asarray(grads["decoder"]["bias"])
            orderings = [_masked_token_orderings(bias[t], q, len(masked)) for t in range(len(group))]
            owner = np.concatenate([np.full(len(o), t) for t, o in enumerate(orderings)])
            fixed = np.asarray([order for o in orderings for order in o])[:, None, :]
            result = run_attack(net, params, jax.tree.map(lambda g: g[owner], grads), 1,
                                dataclasses.replace(config, labels="analytic"), fixed_labels=fixed,
                                progress=progress)
        else:
            owner = np.arange(len(group))
            result = run_attack(net, params, grads, 1, config, progress=progress)
        results.append(result)
        for t, index in enumerate(group):
            rows = np.flatnonzero(owner == t)
            best = rows[np.argmin(np.where(np.isfinite(result.best_loss[rows]), result.best_loss[rows], np.inf))]
            bag = bag_of_tokens(embedding_grads[t])
            target = (embedding_grads[t], jax.tree.map(lambda g: g[t], grads))
            distance_fn = functools.partial(_discrete_distances, net, masked, table, params, *target)
            scale = sum(float(jnp.vdot(g, g)) for g in jax.tree.leaves(target))
            decodings = {}
            known = (0, *masked, length - 1)  # [CLS] first, [SEP] last (BERT's format), [MASK]ed positions
            bag_ids = np.flatnonzero(bag & (np.arange(vocab) != vocabulary.MASK))
            neighbours = _nearest_k(result.best_images[best, 0], table, len(bag_ids))
            for restricted in (False, True):
                nearest = nearest_tokens(result.best_images[best, 0], table, bag if restricted else None)
                nearest[[0, length - 1]] = vocabulary.CLS, vocabulary.SEP
                nearest[list(masked)] = result.best_labels[best, 0]
                options = np.broadcast_to(bag_ids, neighbours.shape) if restricted else neighbours
                refined, distance = refine_tokens(distance_fn, nearest, known, options, max_moves=2 * length,
                                                  tolerance=REPRODUCED * scale)
                suffix = "+bag" if restricted else ""
                decodings["nearest" + suffix] = {"ids": nearest, "scores": score(originals[t], nearest)}
                decodings["refined" + suffix] = {"ids": refined, "scores": score(originals[t], refined),
                                                 "distance": distance}
            chosen = decodings[("refined" if refine else "nearest") + ("+bag" if restrict else "")]
            out[index] = SentenceResult(
                text=sentences[index], original=originals[t], recovered=chosen["ids"], masked=masked,
                snapshots=nearest_tokens(result.snapshots[best, :, 0], table, bag if restrict else None),
                snapshot_iterations=result.snapshot_iterations[best], bag_size=int(bag.sum()),
                loss=float(result.best_loss[best]), gradient_norm2=scale, scores=chosen["scores"],
                decodings=decodings,
            )
    return TextAttackRun(out, results, model, restrict, refine, labels)
