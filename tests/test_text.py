"""Text: vocabulary, model, the engine on embeddings, embedding-to-token mapping, refinement, batches,
a recovery, the CLI."""

import hashlib
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax.attack.engine import run_attack
from dlg_jax.attack.objectives import TAG_L1, tag_distance
from dlg_jax.cli import main
from dlg_jax.data import vocabulary
from dlg_jax.errors import DLGInputError
from dlg_jax.models import Model
from dlg_jax.models.bert import BagWeightsMLM, build_text_model, init_text_weights
from dlg_jax.text import (
    attack_sentences,
    bag_of_tokens,
    discrete_distance_fn,
    encode_batch,
    masked_positions,
    nearest_tokens,
    peel_sentences,
    refine_tokens,
    score,
    text_attack_config,
    text_run_options,
    text_shared_gradients,
)
from dlg_jax.victim.gradients import batch_loss, one_hot, soft_cross_entropy

SENTENCE = "please send the password to the office"


def test_stored_vocabulary_is_bert_sized_and_rebuilt_byte_for_byte():
    with open(vocabulary.PATH, "rb") as handle:
        stored = handle.read()
    assert hashlib.sha256(stored).hexdigest() == vocabulary.SHA256
    assert vocabulary.serialise(vocabulary.build_vocabulary()) == stored
    assert vocabulary.vocab_size() == vocabulary.SIZE == 30522


def test_a_vocabulary_file_that_does_not_match_its_hash_is_refused(tmp_path, monkeypatch, capsys):
    with open(vocabulary.PATH, "rb") as handle:
        tampered = handle.read().replace(b"\npassword\n", b"\npassw0rd\n")
    (tmp_path / "vocabulary.txt").write_bytes(tampered)
    monkeypatch.setattr(vocabulary, "PATH", str(tmp_path / "vocabulary.txt"))
    monkeypatch.setattr(vocabulary, "_STORED", None)
    with pytest.raises(DLGInputError, match="SHA-256"):
        vocabulary.stored()
    assert main(["attack-text", SENTENCE, "--out", str(tmp_path / "never")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("dlg-jax: error:") and "SHA-256" in error
    assert not (tmp_path / "never").exists()


def test_encode_decode_and_how_unknown_words_map():
    ids = vocabulary.encode(SENTENCE, 32)
    assert vocabulary.tokens(ids) == ["[CLS]", *SENTENCE.split(), "[SEP]"]  # every word is one token
    assert vocabulary.decode(ids) == SENTENCE
    # a word outside the word list becomes WordPiece pieces; accents are stripped
    assert vocabulary.tokens(vocabulary.encode("Quokka café", 32))[1:-1] == ["quo", "##k", "##k", "##a", "cafe"]
    for text, message in (("", "empty"), ("   ", "empty"), ("costs €5", "€5"), ("a [MASK] b", "special"),
                          ("the " * 31, "at most 32")):
        with pytest.raises(DLGInputError, match=message):
            vocabulary.encode(text, 32)
    # a smaller vocabulary of the same construction, built on the fly, splits more words
    small = vocabulary.of_size(3131)
    assert small.tokens(small.encode("password", 32))[1:-1] == ["pass", "##w", "##o", "##r", "##d"]


def test_a_batch_is_padded_and_its_bad_sentences_are_named():
    ids = encode_batch(["the cat", "the cat sat down"], 64)
    assert vocabulary.tokens(ids[0]) == ["[CLS]", "the", "cat", "[SEP]", "[PAD]", "[PAD]"]
    assert ids.shape == (2, 6)
    with pytest.raises(DLGInputError, match="sentence 2 of 3 is empty"):
        encode_batch(["the cat", " ", "a dog"], 64)
    with pytest.raises(DLGInputError, match="'the cat sat down' is 6 tokens.*at most 5"):
        encode_batch(["the cat", "the cat sat down"], 5)


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


TWO = ["the cat sat on the warm mat", "a dog ran to the old red barn"]


def _victim(model: str, seed: int, texts=TWO):
    """A masked-LM victim on one batch: ``(ids [B, L], masked, model, W_emb, params, dW_emb [1, V, E],
    encoder gradient with a leading axis of 1)``."""
    ids = encode_batch(texts, 64)
    masked = masked_positions(ids.shape[1], 0)
    net = build_text_model(model, ids.shape[1], masked, vocabulary.vocab_size())
    table, params = init_text_weights(net, jax.random.key(seed))
    inputs = ids.copy()
    inputs[:, list(masked)] = vocabulary.MASK
    embedding_grads, grads = text_shared_gradients(net, table, params, inputs[None], ids[None][..., list(masked)])
    return ids, masked, net, table, params, embedding_grads, grads


def test_bag_weights_model_at_one_hot_weights_gives_the_victims_gradient():
    """Token weights over the bag, one-hot (times sqrt(n)), reproduce the victim's gradient: the encoder's
    and the bag's rows of dW_emb; restricted to the label bag (plus one class for the rest), too."""
    ids, masked, net, table, params, embedding_grads, grads = _victim("bert-tiny", 1)
    inputs = ids.copy()
    inputs[:, list(masked)] = vocabulary.MASK
    labels = ids[:, list(masked)]
    bag = np.flatnonzero(bag_of_tokens(embedding_grads[0]))
    rows = np.searchsorted(bag, inputs)
    weights = jax.nn.one_hot(rows, len(bag)) * np.sqrt(len(bag))
    reference = {"bag_embeddings": embedding_grads[0][bag], "encoder": jax.tree.map(lambda g: g[0], grads)}
    mask_row = int(np.searchsorted(bag, vocabulary.MASK))
    label_tokens = tuple(np.unique(labels).tolist())
    for tokens, targets in ((None, labels), (label_tokens, np.searchsorted(label_tokens, labels))):
        module = BagWeightsMLM(net.module, len(bag), masked, (mask_row,) * len(masked), tokens)
        classes = net.num_classes if tokens is None else len(tokens) + 1
        model = Model("bag", module, (ids.shape[1], len(bag)), classes, label_axes=net.label_axes, modality="text")
        got = jax.grad(lambda w: batch_loss(model, w, weights, one_hot(jnp.asarray(targets), classes)))(
            {"bag_embeddings": table[bag], "encoder": params})
        largest = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(reference))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(reference)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * largest)


@pytest.fixture(scope="module")
def default_run():
    """The CLI's default attack (bert-small, default config) on the done-when sentence, run once."""
    return attack_sentences([SENTENCE])


def test_engine_runs_on_token_weights_with_label_axes(default_run):
    result, sentence = default_run.results[0], default_run.sentences[0]
    length, restarts, bag = len(sentence.original), text_attack_config().restarts, sentence.bag_size
    assert result.images.shape == (1, restarts, 1, length, bag)  # [T, R, B, L, n]: weights over the bag
    assert result.labels.shape == (1, restarts, 1, 1)  # [T, R, B, M]: the masked token, read off the bias
    assert result.snapshots.dtype == np.float32 and result.snapshots.shape == (1, 6, 1, length, bag)
    model = build_text_model("bert-small", length, (2,), vocabulary.vocab_size())
    params = jax.eval_shape(model.init, jax.random.key(0))
    grads = jax.tree.map(lambda p: jnp.zeros((1, *p.shape)), params)
    with pytest.raises(DLGInputError, match="TV prior is for images"):
        run_attack(model, params, grads, 1, text_attack_config(restarts=1, iterations=1, tv_weight=1e-3))


@pytest.mark.recovery
def test_recovers_the_sentence_on_the_default_model(default_run, tmp_path):
    sentence = default_run.sentences[0]
    assert sentence.recovered.tolist() == sentence.original.tolist()
    # the recovered tokens reproduce the gradient
    assert sentence.decodings["refined+bag"]["distance"] < 1e-6 * sentence.gradient_norm2
    out = tmp_path / "out"  # the same attack through the CLI (compiled programs are reused)
    assert main(["attack-text", SENTENCE, "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["recovered_tokens"] == metrics["original_tokens"]
    assert metrics["scores"]["exact_match"] == 1.0 and metrics["scores"]["bleu"] == pytest.approx(100.0)
    assert metrics["recovered_texts"] == [SENTENCE] and metrics["vocabulary_size"] == 30522
    report = (out / "report.txt").read_text()
    assert "iter     0" in report and f"'{SENTENCE}'" in report


def test_restricted_attack_recovers_a_longer_sentence_with_pieces():
    text = "the quokka ate my sandwich at noon, may nine"
    run = attack_sentences([text], "bert-tiny", text_attack_config(restarts=2, iterations=100), restrict=True)
    sentence = run.sentences[0]
    assert sentence.recovered.tolist() == sentence.original.tolist()
    assert sentence.bag_size <= len(sentence.original)


def test_joint_labels_are_optimised_with_free_embeddings():
    run = attack_sentences([SENTENCE], "bert-tiny", text_attack_config(restarts=1, iterations=2), labels="joint",
                           refine=False, dummy="embeddings")
    result, sentence = run.results[0], run.sentences[0]
    assert result.label_logits.shape == (1, 1, 1, len(sentence.masked), vocabulary.vocab_size())
    assert result.images.shape[-1] == 32  # [T, R, B, L, E]: bert-tiny's embeddings
    masked = list(sentence.masked)
    assert sentence.decodings["nearest+bag"]["ids"][0, masked].tolist() == result.best_labels[0, 0].tolist()


@pytest.mark.parametrize("argv, message", [
    (["attack-text", ""], "empty"),
    (["attack-text", "hello world", "--model", "lenet"], "not a text model"),
    (["attack-text", "price in €"], "maps to \\[UNK\\]"),
    (["attack-text", "one two three four five six", "--max-length", "6"], "at most 6"),
    (["attack-text", "one two", "one two three four five six", "--max-length", "6"], "'one two three four five six'.*at most 6"),
    (["attack-text", "one two", "", "three"], "sentence 2 of 3 is empty"),
])
def test_bad_text_input_is_one_line_exit_2(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "never")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("dlg-jax: error:")
    assert re.search(message, error)
    assert not (tmp_path / "never").exists()


def test_tag_distance_is_l2_plus_weighted_l1():
    grad = {"a": jnp.array([1.0, -2.0]), "b": jnp.array([[0.5]])}
    target = {"a": jnp.array([0.0, 1.0]), "b": jnp.array([[1.5]])}
    # differences (1, -3) and (-1): l2 = 1 + 9 + 1, l1 = 1 + 3 + 1
    assert float(tag_distance(grad, target, (1.0, 1.0))) == pytest.approx(11 + TAG_L1 * 5)


def test_scores_match_sentences_to_slots_and_report_duplicates():
    cat, dog = vocabulary.encode("the cat sat", 64), vocabulary.encode("a dog ran", 64)
    originals = np.array([cat, dog])
    swapped = score(originals, np.array([dog, cat]))  # the slots come out in the other order
    assert swapped["assignment"] == [1, 0] and swapped["exact_match"] == 1.0 and swapped["duplicates"] == 0
    collapsed = score(originals, np.array([cat, cat]))  # both slots recovered the first sentence
    assert collapsed["duplicates"] == 2 and collapsed["exact_match"] == 0.5
    assert collapsed["sentences"][1]["token_accuracy"] == 0.0


@pytest.fixture(scope="module")
def tiny_victim():
    """bert-tiny on a batch of two sentences of 8 tokens: ids, masked positions and the exact distance."""
    ids, masked, model, table, params, embedding_grads, grads = _victim("bert-tiny", 0)
    distance = discrete_distance_fn(model, masked, table, params, embedding_grads[0],
                                    jax.tree.map(lambda g: g[0], grads))
    return ids, masked, distance


def test_refinement_keeps_only_changes_that_lower_the_exact_distance(tiny_victim):
    ids, masked, distance = tiny_victim
    free = np.ones(ids.shape, bool)
    free[:, [0, *masked]] = False
    bag = np.unique(ids)
    candidates = np.broadcast_to(bag, (*ids.shape, len(bag)))
    groups = [[(b, l) for l in range(ids.shape[1]) if free[b, l]] for b in range(2)]
    groups.append([(b, l) for b in range(2) for l in masked])
    # from the private batch, no change lowers the distance: it is returned unchanged
    same, value, moves = refine_tokens(distance, ids, free, candidates, groups, max_moves=10)
    assert moves == 0 and same.tolist() == ids.tolist() and value < 1e-6
    # labels on the wrong slots (the two sentences' masked tokens exchanged) and two words wrong: fixed
    wrong = ids.copy()
    wrong[0, masked[0]], wrong[1, masked[0]] = ids[1, masked[0]], ids[0, masked[0]]
    assert free[0, 1] and free[1, 5]
    wrong[0, 1], wrong[1, 5] = ids[1, 6], ids[1, 7]
    start = float(distance(wrong[None])[0])
    fixed, value, moves = refine_tokens(distance, wrong, free, candidates, groups, max_moves=10)
    assert fixed.tolist() == ids.tolist() and value < 1e-6 * start and moves >= 3
    # a budget of one change: the result is never worse than where it started
    _, one, _ = refine_tokens(distance, wrong, free, candidates, groups, max_moves=1)
    assert one < start


@pytest.mark.recovery
def test_peeling_keeps_the_certified_sentence_and_solves_the_other_again():
    """A batch of two with the second sentence wrong (two words exchanged): the first is certified by its
    input gradients, its share is subtracted, and the second is recovered alone from the residual."""
    ids, masked, net, table, params, embedding_grads, grads = _victim("bert-small", 0)
    target = (embedding_grads[0], jax.tree.map(lambda g: g[0], grads))
    scale = sum(float(jnp.vdot(g, g)) for g in jax.tree.leaves(target))
    wrong = ids.copy()
    wrong[1, [2, 6]] = ids[1, [6, 2]]
    distance_fn = discrete_distance_fn(net, masked, table, params, *target)
    distance = float(distance_fn(wrong[None])[0])
    config = text_attack_config(restarts=2, iterations=300)
    labels = np.sort(ids[:, list(masked)].ravel())
    peeled, value, rounds = peel_sentences(net, table, params, masked, target, distance_fn, wrong, distance, labels,
                                           config, text_run_options(300), True, scale, rounds=1)
    assert peeled.tolist() == ids.tolist() and value < 1e-6 * scale and rounds == 1
    # from the private batch, every sentence is certified: nothing is left to attack again
    same, value, _ = peel_sentences(net, table, params, masked, target, distance_fn, ids, 1.0, labels, config,
                                    text_run_options(300), True, scale)
    assert same.tolist() == ids.tolist() and value == 1.0


def test_small_budget_refinement_never_loses_to_the_decoded_sentence():
    """The CLI's small-budget case (2 restarts, 150 iterations) on a sentence of WordPiece pieces."""
    run = attack_sentences(["the quokka ate my sandwich at noon"], "bert-tiny",
                           text_attack_config(restarts=2, iterations=150))
    decodings = run.batches[0].decodings
    assert decodings["refined+bag"]["distance"] <= decodings["nearest+bag"]["distance"]
    assert decodings["refined+bag"]["scores"]["token_accuracy"] >= decodings["nearest+bag"]["scores"]["token_accuracy"]
    assert decodings["refined+bag"]["scores"]["exact_match"] == 1.0


def test_a_batch_of_two_sentences_through_the_cli_is_matched_to_its_slots(tmp_path):
    """Two sentences in one gradient on bert-tiny with a small budget: a partial recovery (measured: ROUGE-L
    0.81, one sentence exact); the refinement lowers the exact distance and the slots are matched."""
    texts = ["the cat sat on the warm mat", "a dog ran to the old red barn"]
    out = tmp_path / "batch"
    assert main(["attack-text", *texts, "--model", "bert-tiny", "--restarts", "2", "--iterations", "150",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["recovered_texts"]) == 2 and sorted(metrics["slots"]) == [0, 1]
    assert metrics["scores"]["rougeL"] >= 0.6 and metrics["scores"]["token_accuracy"] >= 0.5
    assert metrics["scores"]["duplicates"] == 0
    assert metrics["gradient_distance"] < 0.5 * metrics["decoded_gradient_distance"]
    assert "original 2" in (out / "report.txt").read_text()


def test_text_study_runs_through_the_grid_into_a_store(tmp_path):
    out = tmp_path / "exp"
    argv = ["experiment", "text", "--quick", "--quiet", "--iterations", "3", "--model", "bert-tiny", "--dataset",
            "sentences-8", "--out", str(out)]
    assert main(argv) == 0
    points = json.loads((out / "text.json").read_text())["points"]
    assert sorted((p["batch_size"], p["distance"], p["length"]) for p in points) == [
        (1, "l2", 8), (2, "l2", 8), (2, "tag", 8)]  # the study's grids, overlapping points run once
    pair = next(p for p in points if p["batch_size"] == 2 and p["distance"] == "l2")
    assert pair["sentences"] == [["please send me the report today", "we will visit our family soon"]]
    assert all(0.0 <= p[d]["token_accuracy"] <= 1.0 for p in points for d in ("nearest", "refined+bag"))
    assert "| bert-tiny | 8 | 2 |" in (out / "text.md").read_text()
    parts = sorted(os.listdir(out / "store" / "parts"))
    assert main(argv) == 0 and sorted(os.listdir(out / "store" / "parts")) == parts  # found, not rerun
