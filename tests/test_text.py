"""Text: vocabulary, model, the engine on embeddings, embedding-to-token mapping, a recovery, the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax import vocabulary
from dlg_jax.attack import run_attack
from dlg_jax.cli import main
from dlg_jax.errors import DLGInputError
from dlg_jax.models.bert import build_text_model, init_text_weights
from dlg_jax.text_attack import (attack_sentences, bag_of_tokens, masked_positions, nearest_tokens,
                                 text_attack_config, text_shared_gradients)
from dlg_jax.victim import soft_cross_entropy

SENTENCE = "the meeting starts at nine"


def test_stored_vocabulary_is_rebuilt_byte_for_byte():
    with open(vocabulary.PATH, "rb") as handle:
        assert vocabulary.serialise(vocabulary.build_vocabulary()) == handle.read()


def test_encode_decode_and_how_unknown_words_map():
    ids = vocabulary.encode(SENTENCE, 32)
    assert vocabulary.tokens(ids) == ["[CLS]", "the", "meeting", "starts", "at", "nine", "[SEP]"]
    assert vocabulary.decode(ids) == SENTENCE
    # a word outside the word list becomes WordPiece pieces; accents are stripped
    assert vocabulary.tokens(vocabulary.encode("Deadline café", 32))[1:-1] == ["dead", "##line", "ca", "##f", "##e"]
    for text, message in (("", "empty"), ("   ", "empty"), ("costs €5", "€5"), ("a [MASK] b", "special"),
                          ("the " * 31, "at most 32")):
        with pytest.raises(DLGInputError, match=message):
            vocabulary.encode(text, 32)


def test_nearest_tokens_maps_embeddings_to_their_tokens():
    table = np.asarray(jax.random.normal(jax.random.key(1), (50, 16)))
    ids = np.array([3, 7, 7, 49, 0])
    exact = table[ids]
    assert nearest_tokens(exact, table).tolist() == ids.tolist()
    # the first LayerNorm cannot see a shift along (1, ..., 1): the mapping ignores it too
    shifted = exact + np.array([5.0, -2.0, 0.3, 9.0, 1.0])[:, None]
    assert nearest_tokens(shifted, table).tolist() == ids.tolist()
    noisy = exact + 0.05 * np.asarray(jax.random.normal(jax.random.key(2), exact.shape))
    assert nearest_tokens(noisy, table).tolist() == ids.tolist()
    # restricted to candidates, every position maps into the candidate set
    candidates = np.zeros(50, bool)
    candidates[[3, 49]] = True
    assert set(nearest_tokens(noisy, table, candidates).tolist()) <= {3, 49}


def test_masked_lm_loss_and_bag_of_tokens():
    ids = np.asarray(vocabulary.encode(SENTENCE, 32))
    masked = masked_positions(len(ids), 0)
    assert masked == masked_positions(len(ids), 0) and len(masked) == 1 and 0 < masked[0] < len(ids) - 1
    model = build_text_model("bert-tiny", len(ids), masked, vocabulary.vocab_size())
    table, params = init_text_weights(model, jax.random.key(0))
    logits = model.apply(params, table[ids][None])
    assert logits.shape == (1, len(masked), vocabulary.vocab_size())
    # soft cross-entropy with a masked-position axis: mean over batch and masked positions (BERT's MLM loss)
    targets = jax.nn.one_hot(jnp.array([[4, 9]]), logits.shape[-1])
    two = jnp.concatenate([logits, logits], axis=1)
    expected = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(two), jnp.array([[[4], [9]]]), -1))
    assert np.isclose(soft_cross_entropy(two, targets), expected, rtol=1e-6)
    inputs = ids.copy()
    inputs[list(masked)] = vocabulary.MASK
    embedding_grads, grads = text_shared_gradients(model, table, params, inputs[None, None],
                                                   ids[None, None][..., list(masked)])
    assert np.flatnonzero(bag_of_tokens(embedding_grads[0])).tolist() == sorted(set(inputs.tolist()))
    assert grads["decoder"]["kernel"].shape[0] == 1


@pytest.fixture(scope="module")
def default_run():
    """The CLI's default attack (bert-small, default config) on the done-when sentence, run once."""
    return attack_sentences([SENTENCE])


def test_engine_runs_on_embeddings_with_label_axes(default_run):
    result, length = default_run.results[0], len(default_run.sentences[0].original)
    restarts = text_attack_config().restarts
    assert result.images.shape == (1, restarts, 1, length, 64)  # [T, R, B, L, E]
    assert result.labels.shape == (1, restarts, 1, 1)  # [T, R, B, M]: the masked token, read off the bias
    assert result.snapshots.dtype == np.float32 and result.snapshots.shape == (1, 6, 1, length, 64)
    model = build_text_model("bert-small", length, (2,), vocabulary.vocab_size())
    params = jax.eval_shape(model.init, jax.random.key(0))
    grads = jax.tree.map(lambda p: jnp.zeros((1, *p.shape)), params)
    with pytest.raises(DLGInputError, match="TV prior is for images"):
        run_attack(model, params, grads, 1, text_attack_config(restarts=1, iterations=1, tv_weight=1e-3))


def test_recovers_the_sentence_on_the_default_model(default_run, tmp_path):
    sentence = default_run.sentences[0]
    assert sentence.recovered.tolist() == sentence.original.tolist()
    assert sentence.decodings["refined"]["distance"] < 1e-6  # the recovered tokens reproduce the gradient
    out = tmp_path / "out"  # the same attack through the CLI (compiled programs are reused)
    assert main(["attack-text", SENTENCE, "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recovered_tokens"] == metrics["original_tokens"]
    assert metrics["scores"]["exact_match"] == 1.0 and metrics["scores"]["bleu"] == pytest.approx(100.0)
    assert metrics["recovered_text"] == SENTENCE
    report = (out / "report.txt").read_text()
    assert "iter     0" in report and f"'{SENTENCE}'" in report


def test_restricted_attack_recovers_a_longer_sentence_with_pieces():
    text = "the deadline for papers is friday, may nine"
    run = attack_sentences([text], "bert-tiny", text_attack_config(restarts=2, iterations=100), restrict=True)
    sentence = run.sentences[0]
    assert sentence.recovered.tolist() == sentence.original.tolist()
    assert sentence.bag_size <= len(sentence.original)


def test_joint_labels_are_optimised_with_the_embeddings():
    run = attack_sentences([SENTENCE], "bert-tiny", text_attack_config(restarts=1, iterations=2), labels="joint")
    result, sentence = run.results[0], run.sentences[0]
    assert result.label_logits.shape == (1, 1, 1, len(sentence.masked), vocabulary.vocab_size())
    masked = list(sentence.masked)
    assert sentence.decodings["nearest"]["ids"][masked].tolist() == result.best_labels[0, 0].tolist()


@pytest.mark.parametrize("argv, message", [
    (["attack-text", ""], "empty"),
    (["attack-text", "hello world", "--model", "lenet"], "not a text model"),
    (["attack-text", "price in €"], "maps to \\[UNK\\]"),
    (["attack-text", "one two three four five six", "--max-length", "6"], "at most 6"),
])
def test_bad_text_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "never")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("dlg-jax: error:")
    import re
    assert re.search(message, error)
    assert not (tmp_path / "never").exists()
