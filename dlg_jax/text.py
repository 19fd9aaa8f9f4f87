"""DLG on text: recover a batch of sentences from the gradient of one masked-language-model step of a
BERT-style model.

**The victim** (``B`` sentences per shared gradient): each text becomes ``[CLS] tokens... [SEP]``
(:mod:`dlg_jax.data.vocabulary`), padded with ``[PAD]`` after ``[SEP]`` to the batch's longest, ``L`` tokens
(ids ``s [B, L]``); ``M = max(1, round(0.15 (L - 2)))`` of the positions ``1..L-2`` (BERT's 15%; the
same positions in every sentence of the batch) are masked: their input id becomes ``[MASK]`` and their
original ids are the labels ``y [B, M]`` (all selected positions become ``[MASK]``; BERT's 10% random /
10% unchanged split is not used). The client shares ``dW = grad_W loss`` for ``W = (W_emb, encoder)``,
the loss being :func:`dlg_jax.victim.gradients.batch_loss` of the encoder (:mod:`dlg_jax.models.bert`) on the
embeddings ``W_emb[input ids]`` with one-hot targets at the masked positions (mean over ``B`` and ``M``).

**What the attacker knows**: the weights ``W`` and the shared gradient ``dW``, ``B``, ``L`` and which
positions were masked (drawn from ``(seed, L)`` by :func:`masked_positions`, as a server that seeds the
clients' masking would know). Not the tokens, nor where a shorter sentence of a batch ends.

**The attack** runs the one engine, :func:`dlg_jax.attack.engine.run_attack`, with L-BFGS
(``distance="l2"``, DLG's, or ``"tag"``, TAG's L2 + L1) on one of two dummies:

- ``bag`` (default): the non-zero rows of ``dW_emb`` name the ``n`` input tokens (the bag), so the dummy
  is token weights ``w' [B, L, n] ~ N(0, 1)`` with embeddings ``x' = w' W_emb[bag] / sqrt(n)``
  (:class:`dlg_jax.models.bert.BagWeightsMLM`; ``[CLS]``, ``[MASK]`` and, for one sentence, ``[SEP]``
  at their known places), matched on the encoder's gradient *and* the bag's rows of ``dW_emb``, which
  are ``sum_{b,l} w'_blv u_bl / sqrt(n)`` for ``u = dloss/dx``: ``n E`` more equations, which tie each
  token's row to the positions it is placed at. One engine run per batch (each has its own bag).
- ``embeddings`` (DLG's): free word embeddings ``x' [B, L, E] ~ N(0, 1)`` matched on the encoder's
  gradient only (the dummy has no lookup); all restarts and batches of one shape vmapped together.

The labels:

- ``bias`` (default; iDLG's idea for MLM): the decoder bias gradient is
  ``db = (1/BM) sum_{b,m} (softmax(logits_bm) - onehot(y_bm))``, so the ``BM`` masked tokens are the
  entries of ``BM (q - db)`` near 1 (:func:`dlg_jax.attack.labels.count_labels`, ``q`` the model's mean
  prediction on N(0, 1) embeddings). Their placement over the ``B x M`` masked slots is unknown: when it
  has at most ``MAX_ORDERINGS`` distinct orderings, each is one more target of the same vmapped run and
  the ordering whose best restart matches ``dW`` best wins; beyond that (long sentences, batches) the
  slots' label logits are optimised as DLG's (below) and the bag of masked tokens is placed on the slots
  by an optimal assignment (Hungarian) on those logits. With the ``bag`` dummy those logits range over
  the label bag's ``k`` tokens and one class for the rest of the vocabulary (``BagWeightsMLM``'s
  ``label_tokens``: the same cross-entropy, ``k + 1`` logits per slot instead of ``V``).
- ``joint`` (DLG's): dummy label logits ``[B, M, V]`` optimised with the embeddings; the label is their
  argmax.

**Decoding**: every position's token is its nearest vocabulary embedding; ``[CLS]`` is put first (and,
for one sentence, ``[SEP]`` last: BERT's input format) and masked positions take the recovered labels.
The first LayerNorm cannot see a constant shift of an embedding along ``(1, ..., 1)`` (it subtracts the
mean over ``E``), so the gradient does not determine it either and the distance is taken between
mean-centred vectors. With ``restrict=True`` (default) the candidates are the rows of ``dW_emb`` that are
not zero: the bag of input tokens (``[CLS]``, ``[SEP]``, ``[MASK]``, ``[PAD]`` and every unmasked word),
at most ``B L`` of the ``V`` tokens.

**Refinement** (``refine=True``, default): tokens are discrete, so the attacker can check a candidate
batch exactly. :func:`refine_tokens` greedily applies the single change that most lowers the exact
distance ``||grad_W loss(candidate) - dW||^2`` (``dW_emb`` included; :func:`_discrete_distances`) and
keeps it only if it does lower it, so the refined tokens never match the gradient worse than the
decoded ones. The changes: one position set to one of its ``K`` nearest candidates (bag tokens with
``restrict``, else vocabulary tokens; ``K = min(bag size, CANDIDATES)``) and, with ``swaps=True``
(LAMP's discrete transformations, Balunovic et al. 2022, on the gradient distance alone: no language
model), two positions of one sentence swapped, one token moved to another place of its sentence (the
tokens between shifting by one) or two masked slots of the batch exchanging their labels. It stops
when no change helps, after ``2 B L`` changes, or when the distance is at most ``REPRODUCED * ||dW||^2``:
the candidate reproduces the shared gradient; the reported ``distance`` certifies it.

**Scores** (:func:`score`): the recovered sentences are assigned to the private ones by an optimal
assignment (``scipy.optimize.linear_sum_assignment``) on token overlap (equal tokens at equal
positions); per sentence, over its word positions (masked ones included): token accuracy, exact match,
BLEU (``sacrebleu``, sentence level) and ROUGE-1/ROUGE-L F1 (``rouge-score``) of the decoded text.
``duplicates``: recovered sentences identical to another recovered sentence while their private
sentences differ (the attack collapsed two slots onto one sentence).
"""

import dataclasses
import functools
import itertools
import math
from collections import Counter
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from dlg_jax.attack.engine import AttackConfig, AttackResult, Progress, RunOptions, run_attack
from dlg_jax.attack.labels import count_labels
from dlg_jax.attack.objectives import l2_distance
from dlg_jax.data import vocabulary as vocabularies
from dlg_jax.errors import DLGInputError, check_choice
from dlg_jax.models import Model
from dlg_jax.models.bert import (
    DEFAULT_TEXT_MODEL,
    MAX_LENGTH,
    TEXT_MODELS,
    BagWeightsMLM,
    build_text_model,
    init_text_weights,
)
from dlg_jax.victim.gradients import batch_loss, one_hot

MASK_RATE = 0.15
TEXT_LABELS = ("bias", "joint")
TEXT_DUMMIES = ("bag", "embeddings")  # token weights over the bag of input tokens, or free word embeddings
REPRODUCED = 1e-6  # a token batch whose gradient distance is <= this x ||dW||^2 reproduces the gradient
MAX_ORDERINGS = 24  # label placements enumerated as targets; more: labels optimised, then assigned
CANDIDATES = 8  # substitutions per position tried by the refinement (its nearest tokens)
DISCRETE_CHUNK = 64  # candidate batches per compiled call of the exact distance


def text_attack_config(**overrides) -> AttackConfig:
    """The engine settings for text: DLG's (L-BFGS, l2, N(0, 1) dummies), 4 restarts, 300 iterations."""
    return AttackConfig(**{**dict(restarts=4, iterations=300, tolerance=1e-10), **overrides})


def text_run_options(iterations: int, snapshots: int = 6, **overrides) -> RunOptions:
    """How a text attack of ``iterations`` runs: it reports at its ``snapshots`` only (one compiled block
    size, ``iterations / (snapshots - 1)``); ``overrides``: other :class:`RunOptions` fields."""
    block = max(1, iterations // max(1, snapshots - 1))
    return RunOptions(**{"snapshots": snapshots, "block": block, **overrides})


def masked_positions(length: int, seed: int) -> tuple[int, ...]:
    """The ``M = max(1, round(0.15 (L - 2)))`` masked positions (sorted, in ``1..L-2``) of a sequence of
    ``L >= 3`` tokens, drawn from ``(seed, L)``."""
    if length < 3:
        raise DLGInputError(f"a sequence needs at least one word besides [CLS] and [SEP], got length {length}")
    count = max(1, int(round(MASK_RATE * (length - 2))))
    rng = np.random.default_rng([seed, length])
    return tuple(int(p) for p in np.sort(rng.choice(np.arange(1, length - 1), count, replace=False)))


def encode_batch(texts: Sequence[str], max_length: int, vocab: vocabularies.Vocabulary | None = None) -> np.ndarray:
    """``[B, L]`` ids of one batch: each text's ``[CLS] ... [SEP]`` padded with ``[PAD]`` to the longest.
    :class:`DLGInputError` for no text, an empty text or one longer than ``max_length`` (naming it)."""
    vocab = vocabularies.stored() if vocab is None else vocab
    if isinstance(texts, str) or not len(texts):
        raise DLGInputError("a batch needs a list of at least one sentence")
    encoded = []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise DLGInputError(f"sentence {i + 1} of {len(texts)} is empty; give English words")
        encoded.append(vocab.encode(text, max_length))
    length = max(len(ids) for ids in encoded)
    return np.asarray([ids + [vocabularies.PAD] * (length - len(ids)) for ids in encoded])


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


def _nearest_k(embeddings: np.ndarray, table: np.ndarray, k: int, candidates: np.ndarray | None = None) -> np.ndarray:
    """``[..., k]``: the ``k`` tokens nearest to each embedding (mean-centred, as :func:`nearest_tokens`),
    among ``candidates [V]`` (bool) when given."""
    distance = _centred_distances(embeddings, table)
    if candidates is not None:
        distance = np.where(np.asarray(candidates, bool), distance, np.inf)
    return np.argsort(distance, axis=-1, kind="stable")[..., :k]


def _centred_distances(embeddings: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``[..., V]`` squared distances between ``embeddings [..., E]`` and the rows of ``table [V, E]``, each
    vector minus its mean over ``E``."""
    x = np.asarray(embeddings, np.float64)
    x = x - x.mean(-1, keepdims=True)
    w = np.asarray(table, np.float64)
    w = w - w.mean(-1, keepdims=True)
    return (x ** 2).sum(-1)[..., None] - 2 * x @ w.T + (w ** 2).sum(-1)


def _orderings(labels: Sequence[int]) -> int:
    """How many distinct orderings a multiset of labels has: ``n! / prod_k n_k!``."""
    return math.factorial(len(labels)) // math.prod(math.factorial(c) for c in Counter(labels).values())


@jax.jit(static_argnums=(0, 2))
def _mean_prediction(model: Model, params: Any, count: int = 16) -> jnp.ndarray:
    """``q [V]``: the model's mean softmax over ``count`` N(0, 1) embedding sequences (fixed key)."""
    x = jax.random.normal(jax.random.key(0), (count, *model.input_shape), jax.tree.leaves(params)[0].dtype)
    return jnp.mean(jax.nn.softmax(model.apply(params, x), -1), axis=(0, 1))


def assign_labels(label_logits: np.ndarray, bag: Sequence[int], classes: np.ndarray | None = None) -> np.ndarray:
    """Place the multiset ``bag`` (``B M`` token ids) on the ``B x M`` masked slots: the assignment
    maximising ``sum log_softmax(label_logits [B, M, K])`` at the placed tokens (Hungarian); ``classes [K]``
    (sorted): the token of each logit (default: logit ``v`` is token ``v``). Returns ``[B, M]``."""
    logits = np.asarray(label_logits, np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    columns = np.asarray(bag) if classes is None else np.searchsorted(classes, np.asarray(bag))
    slots = log_p.reshape(-1, log_p.shape[-1])[:, columns]  # [BM slots, BM bag entries]
    rows, cols = linear_sum_assignment(-slots)
    placed = np.empty(len(rows), np.int64)
    placed[rows] = np.asarray(bag)[cols]
    return placed.reshape(logits.shape[:-1])


def refine_tokens(distance_fn: Callable, ids: np.ndarray, free: np.ndarray, candidates: np.ndarray,
                  swap_groups: Sequence[Sequence[tuple[int, int]]], max_moves: int, tolerance: float = 0.0,
                  shift_groups: Sequence[Sequence[tuple[int, int]]] = ()) -> tuple[np.ndarray, float, int]:
    """Greedy discrete search from ``ids [B, L]``: repeatedly apply the single move that most lowers
    ``distance_fn(batch [N, B, L]) -> [N]`` and keep it only if it does. Moves: a position ``(b, l)`` with
    ``free[b, l]`` set to one of ``candidates [B, L, K]``; two positions of one of ``swap_groups`` (lists of
    ``(b, l)``) exchanging their tokens; in one of ``shift_groups`` (ordered lists of positions), one token
    taken out and put back at another place of the list, the tokens between moving up or down by one.
    Stops when no move helps, the distance is at most ``tolerance`` (the gradient is reproduced) or after
    ``max_moves``. Returns the final ids, their distance and the number of moves applied."""
    ids = np.array(ids)
    moves_of = [([(b, l)], [c]) for b, l in zip(*np.nonzero(free)) for c in candidates[b, l]]
    current, moves = float(distance_fn(ids[None])[0]), 0
    while moves < max_moves and current > tolerance:
        trials = [_changed(ids, where, what) for where, what in moves_of]
        for group in swap_groups:
            trials += [_changed(ids, [p, r], [ids[r], ids[p]]) for p, r in itertools.combinations(group, 2)]
        for group in shift_groups:
            tokens = [ids[p] for p in group]
            for a, b in itertools.permutations(range(len(group)), 2):
                if abs(a - b) > 1:  # a shift by one place is a swap
                    shifted = tokens[:a] + tokens[a + 1:]
                    shifted.insert(b, tokens[a])
                    trials.append(_changed(ids, group, shifted))
        if not trials:
            break
        scores = np.asarray(distance_fn(np.stack(trials)))
        best = int(np.argmin(scores))
        if not scores[best] < current:
            break
        ids, current, moves = trials[best], float(scores[best]), moves + 1
    return ids, current, moves


def _changed(ids: np.ndarray, where: Sequence[tuple[int, int]], what: Sequence[int]) -> np.ndarray:
    out = ids.copy()
    for (b, l), token in zip(where, what):
        out[b, l] = token
    return out


def discrete_distance_fn(model: Model, masked: tuple[int, ...], table, params, embedding_grad, grads) -> Callable:
    """``batch [N, B, L] -> [N]``: :func:`_discrete_distances` in compiled chunks of ``DISCRETE_CHUNK``
    candidates (one compiled shape per model, the last chunk padded)."""

    def distances(batch):
        batch = np.asarray(batch)
        out = []
        for start in range(0, len(batch), DISCRETE_CHUNK):
            chunk = batch[start:start + DISCRETE_CHUNK]
            padded = np.concatenate([chunk, np.repeat(chunk[:1], DISCRETE_CHUNK - len(chunk), 0)])
            values = _discrete_distances(model, masked, table, params, embedding_grad, grads, jnp.asarray(padded))
            out.append(np.asarray(values)[:len(chunk)])
        return np.concatenate(out)

    return distances


@functools.partial(jax.jit, static_argnums=(0, 1))
def _discrete_distances(model: Model, masked: tuple[int, ...], table, params, embedding_grad, grads, batch):
    """``[N]``: ``||grad_W loss(ids) - dW||^2`` over every parameter (``W_emb`` included) for each candidate
    batch ``batch [N, B, L]``: its masked positions' tokens are the labels and ``[MASK]`` the input there.

    The ``W_emb`` part without the ``[V, E]`` gradient: with ``u_bl = dloss/dx_bl`` and input ids ``s``,
    ``dW_emb(s) = sum_bl onehot(s_bl) u_bl``, so ``||dW_emb(s) - D||^2 = sum_{i,j} [s_i = s_j] <u_i, u_j>
    - 2 sum_i <u_i, D[s_i]> + ||D||^2`` over the flattened positions ``i = (b, l)``."""
    positions = np.asarray(masked)
    weights = (1.0,) * len(jax.tree.leaves(grads))
    constant = jnp.vdot(embedding_grad, embedding_grad)

    def one(ids):
        inputs = ids.at[:, positions].set(vocabularies.MASK)
        targets = one_hot(ids[:, positions], model.num_classes, table.dtype)
        u, encoder = jax.grad(lambda x, p: batch_loss(model, p, x, targets), argnums=(0, 1))(table[inputs], params)
        u, inputs = u.reshape(-1, u.shape[-1]), inputs.reshape(-1)
        same = inputs[:, None] == inputs[None, :]
        embedding_part = jnp.sum(jnp.where(same, u @ u.T, 0.0)) - 2 * jnp.vdot(u, embedding_grad[inputs]) + constant
        return jnp.maximum(embedding_part, 0.0) + l2_distance(encoder, grads, weights)  # >= 0 up to rounding

    return jax.lax.map(one, batch, batch_size=16)


def score(originals: np.ndarray, recovered: np.ndarray, vocab: vocabularies.Vocabulary | None = None) -> dict:
    """Scores of one batch, ``originals, recovered [B, L]``: recovered sentences matched to the private
    ones (Hungarian on equal tokens at equal positions), then per private sentence over its word
    positions (after ``[CLS]``, before its ``[SEP]``): token accuracy, exact match, BLEU and ROUGE F1 of the
    texts; the batch's means, the ``assignment [B]`` (recovered sentence of each private one), the
    ``duplicates`` count and the per-sentence scores ``sentences``."""
    import sacrebleu
    from rouge_score import rouge_scorer

    vocab = vocabularies.stored() if vocab is None else vocab
    originals, recovered = np.atleast_2d(originals), np.atleast_2d(recovered)
    words = [slice(1, int(np.flatnonzero(row == vocabularies.SEP)[0])) for row in originals]
    overlap = np.array([[np.sum(originals[i, w] == recovered[j, w]) for j in range(len(recovered))]
                        for i, w in enumerate(words)])
    _, assignment = linear_sum_assignment(-overlap)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    sentences = []
    for i, w in enumerate(words):
        guess = recovered[assignment[i]]
        hits = originals[i, w] == guess[w]
        reference, hypothesis = vocab.decode(originals[i]), vocab.decode(guess)
        rouge = scorer.score(reference, hypothesis)
        sentences.append({"token_accuracy": float(hits.mean()), "exact_match": float(hits.all()),
                          "bleu": float(sacrebleu.sentence_bleu(hypothesis, [reference]).score),
                          "rouge1": float(rouge["rouge1"].fmeasure), "rougeL": float(rouge["rougeL"].fmeasure)})
    same_guess = (recovered[:, None, 1:] == recovered[None, :, 1:]).all(-1)
    same_truth = (originals[:, None, 1:] == originals[None, :, 1:]).all(-1)
    twins = same_guess[np.ix_(assignment, assignment)] & ~same_truth
    means = {key: float(np.mean([s[key] for s in sentences])) for key in sentences[0]}
    return {**means, "duplicates": int(twins.any(1).sum()), "assignment": assignment.tolist(),
            "sentences": sentences}


@dataclasses.dataclass
class BatchResult:
    """One shared gradient: the private ``texts`` and ids ``original [B, L]``, the recovered ids
    ``recovered [B, L]`` (slot order, decoded as the run asked), the masked positions, the decoded
    snapshots ``[S, B, L]`` at ``snapshot_iterations``, the continuous objective ``loss``, the shared
    gradient's ``||dW||^2``, ``orderings`` (label placements run as targets; 0: labels optimised, then
    assigned), and every decoding (``nearest`` / ``refined`` / ``peeled`` (:func:`peel_sentences`),
    each over all tokens or the bag ``+bag``; refined ones also without swaps ``-swaps``) with its ids,
    scores (:func:`score`) and exact gradient ``distance``; ``decoding``: the one reported as ``recovered``."""

    texts: list[str]
    original: np.ndarray
    recovered: np.ndarray
    masked: tuple[int, ...]
    snapshots: np.ndarray
    snapshot_iterations: np.ndarray
    bag_size: int
    loss: float
    gradient_norm2: float
    orderings: int
    scores: dict
    decodings: dict
    decoding: str
    vocab: vocabularies.Vocabulary = dataclasses.field(repr=False, default=None)

    @property
    def recovered_texts(self) -> list[str]:
        return [self.vocab.decode(ids) for ids in self.recovered]


@dataclasses.dataclass
class SentenceResult:
    """Private sentence ``index`` of a batch and the recovered sentence assigned to it: ids ``original [L]``
    and ``recovered [L]`` (``L``: the batch's length), its scores; ``batch``: the whole batch's result."""

    index: int
    text: str
    original: np.ndarray
    recovered: np.ndarray
    scores: dict
    batch: BatchResult

    @property
    def recovered_text(self) -> str:
        return self.batch.vocab.decode(self.recovered)

    # the batch's fields, for one-sentence batches
    masked = property(lambda self: self.batch.masked)
    bag_size = property(lambda self: self.batch.bag_size)
    loss = property(lambda self: self.batch.loss)
    gradient_norm2 = property(lambda self: self.batch.gradient_norm2)
    snapshot_iterations = property(lambda self: self.batch.snapshot_iterations)
    decodings = property(lambda self: self.batch.decodings)

    @property
    def snapshots(self) -> np.ndarray:
        slot = self.batch.scores["assignment"][self.index]
        return self.batch.snapshots[:, slot]


@dataclasses.dataclass
class TextAttackRun:
    batches: list[BatchResult]
    results: list[AttackResult]  # the engine runs: one per batch shape (B, L), or per batch with the bag dummy
    model: str
    restrict: bool
    refine: bool
    labels: str

    @property
    def sentences(self) -> list[SentenceResult]:
        """Every private sentence (batch by batch) with the recovered sentence assigned to it."""
        out = []
        for batch in self.batches:
            for i, text in enumerate(batch.texts):
                slot = batch.scores["assignment"][i]
                out.append(SentenceResult(i, text, batch.original[i], batch.recovered[slot],
                                          batch.scores["sentences"][i], batch))
        return out

    def summary(self, decoding: str | None = None) -> dict:
        """Mean scores over the sentences, of the run's decoding or of ``decoding`` (a key of ``decodings``)."""
        rows = [s for b in self.batches
                for s in (b.scores if decoding is None else b.decodings[decoding]["scores"])["sentences"]]
        return {f"{key}_mean": float(np.mean([row[key] for row in rows])) for key in rows[0]}


def attack_sentences(sentences: Sequence[str], model: str = DEFAULT_TEXT_MODEL, config: AttackConfig | None = None,
                     **options) -> TextAttackRun:
    """Each sentence its own shared gradient (batches of one): :func:`attack_batches`."""
    if isinstance(sentences, str) or not len(sentences):
        raise DLGInputError("no sentences given; give at least one")
    return attack_batches([[text] for text in sentences], model, config, **options)


def attack_batches(
    batches: Sequence[Sequence[str]],
    model: str = DEFAULT_TEXT_MODEL,
    config: AttackConfig | None = None,
    *,
    restrict: bool = True,
    refine: bool = True,
    swaps: bool = True,
    compare: bool = False,
    labels: str = "bias",
    dummy: str = "bag",
    peel: bool = True,
    activation: str = "gelu",
    max_length: int = MAX_LENGTH,
    vocabulary_size: int | None = None,
    run: RunOptions | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> TextAttackRun:
    """Attack each batch's shared MLM gradient (see the module doc); batches of one shape ``(B, L)``
    share one vmapped engine run. ``config.seed`` seeds the weights, the masking and the dummies;
    ``vocabulary_size``: ``None`` for the stored vocabulary, else one built of that size
    (:func:`dlg_jax.data.vocabulary.of_size`). ``compare``: decode the ways worth comparing (nearest over all
    tokens and over the bag; refined from the bag's, with and without swaps), not just the one asked for.
    ``run``: how the engine runs (default :func:`text_run_options` of the config's iterations). ``dummy``:
    ``"bag"`` (token weights over the bag of input tokens, one engine run per batch) or ``"embeddings"``
    (free word embeddings, DLG's; batches of one shape in one run); see the module doc. ``peel``: with the
    bag dummy, the ``bias`` labels and refinement, a batch the refinement leaves unreproduced is solved
    again sentence by sentence (:func:`peel_sentences`)."""
    config = text_attack_config() if config is None else config
    run = text_run_options(config.iterations) if run is None else run
    check_choice("text label strategy", labels, TEXT_LABELS)
    check_choice("text dummy", dummy, TEXT_DUMMIES)
    if model not in TEXT_MODELS:
        raise DLGInputError(f"model {model!r} is not a text model; text models: {', '.join(TEXT_MODELS)}")
    if config.labels != "joint":
        raise DLGInputError("give the text label strategy as labels='bias' or 'joint', not in the AttackConfig")
    if isinstance(batches, str) or not len(batches):
        raise DLGInputError("no sentences given; give at least one")
    vocab = vocabularies.of_size(vocabulary_size)
    encoded = [encode_batch(texts, max_length, vocab) for texts in batches]
    out: list[BatchResult | None] = [None] * len(batches)
    results = []
    for shape in sorted({ids.shape for ids in encoded}):
        group = [i for i, ids in enumerate(encoded) if ids.shape == shape]
        results += _attack_group(group, [encoded[i] for i in group], [list(batches[i]) for i in group], out,
                                 model, config, run, dummy, peel, restrict, refine, swaps, compare, labels, activation,
                                 max_length, vocab, progress)
    return TextAttackRun(out, results, model, restrict, refine, labels)


def _attack_group(group, originals, texts, out, model, config, run, dummy, peel, restrict, refine, swaps, compare,
                  labels, activation, max_length, vocab, progress) -> list[AttackResult]:
    """The batches ``group`` of one shape (one engine run for all, or one per batch with the bag dummy);
    fills ``out[group[t]]``, returns the engine runs."""
    size, length = originals[0].shape
    masked = masked_positions(length, config.seed)
    net = build_text_model(model, length, masked, vocab.size, activation=activation, max_length=max_length)
    table, params = init_text_weights(net, jax.random.key(config.seed), jnp.dtype(config.dtype))
    originals = np.stack(originals)  # [T, B, L]
    inputs = originals.copy()
    inputs[..., list(masked)] = vocabularies.MASK
    embedding_grads, grads = text_shared_gradients(net, table, params, inputs, originals[..., list(masked)])
    label_bags = None
    if labels == "bias":
        q = np.asarray(_mean_prediction(net, params), np.float64)
        bias = np.asarray(grads["decoder"]["bias"], np.float64)
        label_bags = count_labels(bias, q, size * len(masked))  # [T, BM] sorted
    free, groups = _refinement_moves(size, length, masked, sep_last=size == 1)
    if dummy == "embeddings":
        solved, results = _embedding_runs(net, params, grads, size, config, run, progress, label_bags)
    else:
        known = _known_tokens(length, masked, sep_last=size == 1)
        solved, results = [], []
        for t in range(len(group)):
            one, result = _bag_run(net, table, params, np.flatnonzero(bag_of_tokens(embedding_grads[t])),
                                   np.asarray(embedding_grads[t]), jax.tree.map(lambda g: g[t:t + 1], grads), size,
                                   config, run, progress, None if label_bags is None else label_bags[t], known)
            solved.append(one)
            results.append(result)
    for t, index in enumerate(group):
        embeddings, slot_labels = solved[t].embeddings, solved[t].labels
        bag = bag_of_tokens(embedding_grads[t])
        target = (embedding_grads[t], jax.tree.map(lambda g: g[t], grads))
        distance_fn = discrete_distance_fn(net, masked, table, params, *target)
        scale = sum(float(jnp.vdot(g, g)) for g in jax.tree.leaves(target))
        bag_ids = bag & (np.arange(vocab.size) != vocabularies.MASK)
        k = int(min(bag_ids.sum(), CANDIDATES))
        variants = sorted({(refine, restrict), *([(False, False), (True, True)] if compare else [])})
        decodings = {}
        for refined, restricted in variants:
            suffix = "+bag" if restricted else ""
            candidates = bag_ids if restricted else None
            ids = _decoded(embeddings, table, candidates, slot_labels, masked, sep_last=size == 1)
            decodings["nearest" + suffix] = {"ids": ids, "scores": score(originals[t], ids, vocab),
                                             "distance": float(distance_fn(ids[None])[0])}
            if not refined:
                continue
            options = _nearest_k(embeddings, table, k, candidates)
            for name, swap_groups in (("refined", groups if swaps else []), ("refined-swaps", [])):
                if name == "refined-swaps" and not (swaps and compare):
                    continue
                better, distance, moves = refine_tokens(
                    distance_fn, ids, free, options, swap_groups, max_moves=2 * size * length,
                    tolerance=REPRODUCED * scale, shift_groups=groups[:size] if swap_groups else ())
                decodings[name + suffix] = {"ids": better, "scores": score(originals[t], better, vocab),
                                            "distance": distance, "moves": moves}
        name = ("refined" if refine else "nearest") + ("+bag" if restrict else "")
        if (refine and peel and dummy == "bag" and label_bags is not None and size > 1
                and decodings[name]["distance"] > REPRODUCED * scale):
            peeled, distance, rounds = peel_sentences(net, table, params, masked, target, distance_fn,
                                                      decodings[name]["ids"], decodings[name]["distance"],
                                                      label_bags[t], config, run, swaps, scale)
            name = "peeled" + ("+bag" if restrict else "")
            decodings[name] = {"ids": peeled, "scores": score(originals[t], peeled, vocab), "distance": distance,
                               "rounds": rounds}
        chosen = decodings[name]
        out[index] = BatchResult(
            texts=texts[t], original=originals[t], recovered=chosen["ids"], masked=masked,
            snapshots=nearest_tokens(solved[t].snapshots, table, bag_ids if restrict else None),
            snapshot_iterations=solved[t].snapshot_iterations, bag_size=int(bag.sum()),
            loss=solved[t].loss, gradient_norm2=scale, orderings=solved[t].orderings,
            scores=chosen["scores"], decodings=decodings, decoding=name, vocab=vocab,
        )
    return results


def _known_tokens(length: int, masked: tuple[int, ...], sep_last: bool) -> list[tuple[int, int]]:
    """The ``(position, token)`` pairs the attacker knows in every sentence: [CLS] first, [MASK] at the
    masked positions and, with ``sep_last`` (a batch of one sentence: ``L`` is its length), [SEP] last."""
    return [(0, vocabularies.CLS), *((m, vocabularies.MASK) for m in masked),
            *([(length - 1, vocabularies.SEP)] if sep_last else [])]


def _refinement_moves(size: int, length: int, masked: tuple[int, ...], sep_last: bool):
    """What :func:`refine_tokens` may change in a batch ``[B, L]``: ``free [B, L]`` (every position but the
    known ones) and the swap groups (each sentence's free positions, and the labels at the masked
    positions of all sentences, which may trade slots)."""
    free = np.ones((size, length), bool)
    for position, _ in _known_tokens(length, masked, sep_last):
        free[:, position] = False
    groups = [[(b, l) for l in range(length) if free[b, l]] for b in range(size)]
    groups.append([(b, l) for b in range(size) for l in masked])
    return free, groups


def _decoded(embeddings, table, candidates, slot_labels, masked, sep_last: bool) -> np.ndarray:
    """``[B, L]`` ids: each embedding's nearest token (among ``candidates``), ``[CLS]`` first, the masked
    slots' labels and, with ``sep_last``, ``[SEP]`` last."""
    ids = nearest_tokens(embeddings, table, candidates)
    ids[:, 0] = vocabularies.CLS
    if sep_last:
        ids[:, -1] = vocabularies.SEP
    ids[:, list(masked)] = slot_labels
    return ids


@dataclasses.dataclass
class _Solved:
    """One target's continuous match: the best restart's ``embeddings [B, L, E]`` and ``snapshots
    [S, B, L, E]`` at ``snapshot_iterations [S]``, the masked slots' ``labels [B, M]``, its objective
    ``loss`` and how many label ``orderings`` ran as targets (0: labels optimised, then assigned)."""

    embeddings: np.ndarray
    snapshots: np.ndarray
    snapshot_iterations: np.ndarray
    labels: np.ndarray
    loss: float
    orderings: int


def _best_of(result: AttackResult, rows: np.ndarray) -> int:
    """The row of ``rows`` (targets of ``result``) whose best restart matches best."""
    losses = result.best_loss[rows]
    return int(rows[np.argmin(np.where(np.isfinite(losses), losses, np.inf))])


def _label_placements(bag: np.ndarray, size: int, masked_count: int) -> np.ndarray:
    """``[P, B, M]``: every distinct placement of the multiset ``bag`` on the ``B x M`` masked slots."""
    return np.asarray(sorted(set(itertools.permutations(bag.tolist())))).reshape(-1, size, masked_count)


def _embedding_runs(net, params, grads, size, config, run, progress, label_bags):
    """The dummy as free embeddings: one engine run for every target of a group (and, when every target's
    ``label_bags`` has at most ``MAX_ORDERINGS`` placements, each placement as one more target)."""
    targets, masked_count = len(jax.tree.leaves(grads)[0]), net.label_axes[0]
    if label_bags is not None and max(_orderings(bag.tolist()) for bag in label_bags) <= MAX_ORDERINGS:
        placements = [_label_placements(bag, size, masked_count) for bag in label_bags]
        owner = np.concatenate([np.full(len(p), t) for t, p in enumerate(placements)])
        result = run_attack(net, params, jax.tree.map(lambda g: g[owner], grads), size,
                            dataclasses.replace(config, labels="analytic"), fixed_labels=np.concatenate(placements),
                            run=run, progress=progress)
    else:
        owner = np.arange(targets)
        result = run_attack(net, params, grads, size, config, run=run, progress=progress)
    solved = []
    for t in range(targets):
        rows = np.flatnonzero(owner == t)
        best = _best_of(result, rows)
        if result.label_logits is not None and label_bags is not None:
            slot_labels = assign_labels(result.label_logits[best, result.best_restart[best]], label_bags[t])
        else:
            slot_labels = result.best_labels[best]
        solved.append(_Solved(result.best_images[best], result.snapshots[best], result.snapshot_iterations[best],
                              slot_labels, float(result.best_loss[best]),
                              len(rows) if result.label_logits is None else 0))
    return solved, [result]


def _bag_run(net, table, params, bag, embedding_grad, grads, size, config, run, progress, label_bag, known
             ) -> tuple[_Solved, AttackResult]:
    """The dummy as token weights over ``bag`` (token ids; :class:`~dlg_jax.models.bert.BagWeightsMLM`),
    matched on the encoder's gradient and the bag's rows of ``dW_emb``, for one target (``grads`` with a
    leading axis of 1); ``known``: ``(position, token)`` pairs the attacker knows. With ``label_bag`` the
    labels are restricted to its tokens, and their placements are enumerated as targets when there are
    at most ``MAX_ORDERINGS``."""
    row = {int(v): i for i, v in enumerate(bag)}
    enumerate_labels = label_bag is not None and _orderings(list(label_bag)) <= MAX_ORDERINGS
    label_tokens = None if label_bag is None else np.unique(label_bag)
    module = BagWeightsMLM(net.module, len(bag), tuple(p for p, _ in known), tuple(row[v] for _, v in known),
                           None if label_tokens is None else tuple(int(v) for v in label_tokens))
    classes = net.num_classes if label_tokens is None else len(label_tokens) + 1
    model = Model(f"{net.name}-bag", module, (net.input_shape[0], len(bag)), classes, label_axes=net.label_axes,
                  modality="text")
    weights = {"bag_embeddings": table[bag], "encoder": params}
    target = {"bag_embeddings": jnp.asarray(embedding_grad[bag])[None], "encoder": grads}
    if enumerate_labels:
        placements = _label_placements(label_bag, size, net.label_axes[0])
        result = run_attack(model, weights, jax.tree.map(lambda g: jnp.repeat(g, len(placements), 0), target), size,
                            dataclasses.replace(config, labels="analytic"),
                            fixed_labels=np.searchsorted(label_tokens, placements), run=run, progress=progress)
        best = _best_of(result, np.arange(len(placements)))
        slot_labels = label_tokens[result.best_labels[best]]
    else:
        result = run_attack(model, weights, target, size, config, run=run, progress=progress)
        best = 0
        if label_tokens is None:
            slot_labels = result.best_labels[0]
        else:
            slot_labels = assign_labels(result.label_logits[0, result.best_restart[0]][..., :-1], label_bag,
                                        classes=label_tokens)
    rows = np.asarray(table, np.float64)[bag] / math.sqrt(len(bag))
    solved = _Solved(np.asarray(result.best_images[best], np.float64) @ rows,
                     np.asarray(result.snapshots[best], np.float64) @ rows, result.snapshot_iterations[best],
                     slot_labels, float(result.best_loss[best]), len(placements) if enumerate_labels else 0)
    return solved, result


def peel_sentences(net, table, params, masked, target, distance_fn, ids, distance, label_bag, config, run, swaps,
                   scale, rounds: int | None = None) -> tuple[np.ndarray, float, int]:
    """Solve a batch sentence by sentence: keep the recovered sentences the gradient certifies and attack
    the rest again as a smaller batch (the bag dummy, then the refinement), for ``rounds`` rounds (default
    ``B``); a new batch is kept only if its exact distance (``distance_fn``, the batch's
    :func:`discrete_distance_fn`; ``distance``: that of ``ids``) is lower. Returns ``(ids [B, L], distance,
    rounds run)``.

    The batch's gradient is a sum over its sentences, ``dW = sum_b g_b`` with ``g_b`` the gradient of
    ``loss_b / B`` (no batch statistics couple them). A token that occurs once in the recovered inputs
    ``s`` has its row of ``dW_emb`` from one position alone: ``dW_emb[s_bl] = u_bl`` (``u_b = dg_b/dx_b``,
    :func:`sentence_input_gradients`) if sentence ``b`` is the private one (and no other private sentence
    holds the token). A sentence is *certified* when this holds, to ``1e-3`` relative, at two or more such
    positions (``u_b`` depends on the whole sentence and its labels through attention, so a wrong token
    anywhere moves every ``u_bl``: a wrong sentence matches at none). The
    certified sentences' ``g_b`` are subtracted: ``B / B'`` times the residual is the gradient of the
    ``B'`` others, whose bag is the rows of ``dW_emb`` still above ``1e-3`` of their norm and whose label
    bag is ``label_bag`` less the certified sentences' labels."""
    embedding_grad, grads = (np.asarray(target[0], np.float64), jax.tree.map(lambda g: np.asarray(g, np.float64),
                                                                                target[1]))
    size, length = ids.shape
    known = _known_tokens(length, masked, sep_last=False)  # sentences of a batch are padded: no [SEP] last
    done = 0
    for done in range(1, (size if rounds is None else rounds) + 1):
        u, encoder = sentence_input_gradients(net, masked, table, params, jnp.asarray(ids))
        u, encoder = np.asarray(u, np.float64), jax.tree.map(lambda g: np.asarray(g, np.float64), encoder)
        inputs = ids.copy()
        inputs[:, list(masked)] = vocabularies.MASK
        certified = _certified(inputs, u, embedding_grad)
        rest = np.flatnonzero(~certified)
        labels_left = Counter(label_bag.tolist())
        labels_left.subtract(Counter(ids[certified][:, list(masked)].ravel().tolist()))
        if not certified.any() or not len(rest) or min(labels_left.values()) < 0:
            break
        residual = embedding_grad.copy()
        np.add.at(residual, inputs[certified].ravel(), -u[certified].reshape(-1, u.shape[-1]))
        factor = size / len(rest)
        sub_embedding = residual * factor
        sub_grads = jax.tree.map(lambda g, e: (g - e[certified].sum(0)) * factor, grads, encoder)
        used = np.linalg.norm(embedding_grad, axis=-1)
        bag = np.union1d(np.flatnonzero(np.linalg.norm(residual, axis=-1) > 1e-3 * np.maximum(used, 1e-30)),
                         [vocabularies.CLS, vocabularies.MASK])
        sub_labels = np.asarray(sorted(labels_left.elements()))
        dtype = jnp.dtype(config.dtype)
        sub_target = (jnp.asarray(sub_embedding, dtype), jax.tree.map(lambda g: jnp.asarray(g, dtype), sub_grads))
        solved, _ = _bag_run(net, table, params, bag, sub_target[0], jax.tree.map(lambda g: g[None], sub_target[1]),
                             len(rest), config, run, None, sub_labels, known)
        candidates = np.zeros(len(table), bool)
        candidates[bag] = True
        candidates[vocabularies.MASK] = False
        sub_ids = _decoded(solved.embeddings, table, candidates, solved.labels, masked, sep_last=False)
        free, groups = _refinement_moves(len(rest), length, masked, sep_last=False)
        sub_distance = discrete_distance_fn(net, masked, table, params, *sub_target)
        sub_ids, _, _ = refine_tokens(
            sub_distance, sub_ids, free, _nearest_k(solved.embeddings, table, min(CANDIDATES, len(bag)), candidates),
            groups if swaps else [], max_moves=2 * len(rest) * length, tolerance=REPRODUCED * scale,
            shift_groups=groups[:-1] if swaps else ())
        trial = ids.copy()
        trial[rest] = sub_ids
        value = float(distance_fn(trial[None])[0])
        if not value < distance:
            break
        ids, distance = trial, value
        if distance <= REPRODUCED * scale:
            break
    return ids, distance, done


def _certified(inputs: np.ndarray, u: np.ndarray, embedding_grad: np.ndarray, tolerance: float = 1e-3,
               positions: int = 2) -> np.ndarray:
    """``[B]`` bool: sentences of ``inputs [B, L]`` whose input gradients ``u [B, L, E]`` equal the rows of
    ``embedding_grad [V, E]`` (to ``tolerance`` relative) at ``positions`` or more positions holding a token
    that occurs once in ``inputs`` (see :func:`peel_sentences`). Such a position that does not match is no
    evidence against the sentence: the private batch may hold its token again, where another recovered
    sentence has it wrong."""
    tokens, counts = np.unique(inputs, return_counts=True)
    once = np.isin(inputs, tokens[counts == 1]) & (inputs != vocabularies.CLS) & (inputs != vocabularies.MASK)
    rows = embedding_grad[inputs]
    error = np.linalg.norm(u - rows, axis=-1) / np.maximum(np.linalg.norm(rows, axis=-1), 1e-30)
    return np.sum(once & (error <= tolerance), axis=1) >= positions


@functools.partial(jax.jit, static_argnums=(0, 1))
def sentence_input_gradients(model: Model, masked: tuple[int, ...], table, params, ids):
    """Each sentence's share of a batch's gradient: for ``ids [B, L]`` (masked positions holding their
    labels), ``u [B, L, E]`` and the encoder's gradient (leading axis ``B``) of ``loss_b / B``, ``loss_b``
    the masked-LM loss of sentence ``b`` alone; their sum over ``b`` is the batch's gradient (``dW_emb`` is
    ``sum_bl onehot(s_bl) u_bl``)."""
    positions = np.asarray(masked)
    inputs = ids.at[:, positions].set(vocabularies.MASK)
    targets = one_hot(ids[:, positions], model.num_classes, table.dtype)
    size = ids.shape[0]

    def one(x, t):
        return jax.grad(lambda x, p: batch_loss(model, p, x[None], t[None]) / size, argnums=(0, 1))(x, params)

    return jax.vmap(one)(table[inputs], targets)
