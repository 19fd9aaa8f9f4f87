# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Text: a sentence leaking token by token
#
# DLG's second domain. A client takes one masked-language-model step of a small BERT-style model on a
# private sentence (`[CLS] tokens [SEP]`, 15% of the words replaced by `[MASK]` and predicted) and
# shares the gradient. The attacker knows the weights, the sentence length and which positions were
# masked, and runs the same engine as for images. The non-zero rows of the embedding gradient name the
# sentence's tokens (the bag), so the dummy is a weight per position and bag token, `[1, L, n]`, whose
# embeddings (the weighted bag rows) are optimised by L-BFGS until their gradient, the embedding rows'
# included, matches; then each position is decoded to its nearest token (docs/text.md).
#
# Full settings take a minute or two on 2 CPU cores; `DLG_NOTEBOOK_SMALL=1` runs a few iterations.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from dlg_jax.data import vocabulary
from dlg_jax.text import attack_sentences, text_attack_config, text_run_options

SMALL = os.environ.get("DLG_NOTEBOOK_SMALL") == "1"
MODEL = "bert-tiny" if SMALL else "bert-small"
CONFIG = text_attack_config(restarts=1, iterations=20) if SMALL else text_attack_config(restarts=4, iterations=300)
RUN = text_run_options(CONFIG.iterations, snapshots=11)   # 11 snapshots: one every 30 of 300 iterations
SENTENCE = "the meeting starts at nine in the morning"

# %% [markdown]
# ## The attack
#
# `attack_sentences` encodes the sentence, computes the client's shared gradient, reads the masked
# tokens off the decoder's bias gradient (iDLG's idea, `labels="bias"`) and attacks; every restart
# runs in one vmapped, compiled program.

# %%
run = attack_sentences([SENTENCE], MODEL, CONFIG, run=RUN, compare=True)   # compare: every decoding, below
sentence = run.sentences[0]
print("original :", vocabulary.tokens(sentence.original))
print("masked positions:", sentence.masked, "| bag of tokens:", sentence.bag_size, "of", vocabulary.vocab_size())
print("recovered:", vocabulary.tokens(sentence.recovered))
print("text     :", sentence.recovered_text)
print(sentence.scores)

# %% [markdown]
# ## Token by token
#
# The best restart's embeddings, decoded to their nearest token (among the bag of tokens the
# embedding gradient reveals) at evenly spaced iterations: the words lock in as the gradient
# matching converges. The client's input holds `[MASK]` at the masked positions (marked `*` in the
# header); their tokens are the labels, read off the bias gradient before the attack. A ✓ marks a
# position whose decoded token equals the client's input token.

# %%
inputs = sentence.original.copy()
inputs[list(sentence.masked)] = vocabulary.MASK            # what the client's model actually saw
header = [t + ("*" if i in sentence.masked else "") for i, t in enumerate(vocabulary.tokens(sentence.original))]
lines = ["| iteration | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
accuracy = []
for iteration, ids in zip(sentence.snapshot_iterations, sentence.snapshots):
    tokens = vocabulary.tokens(ids)
    hits = [a == b for a, b in zip(ids, inputs)]
    accuracy.append(np.mean(hits[1:-1]))
    lines.append(f"| {iteration} | " + " | ".join(f"{t} ✓" if h else t for t, h in zip(tokens, hits)) + " |")
display(Markdown("\n".join(lines)))

figure, axis = plt.subplots(figsize=(4, 2.2))
axis.plot(sentence.snapshot_iterations, accuracy, "o-", ms=4)
axis.set_ylim(-0.05, 1.05)
axis.set_xlabel("L-BFGS iteration")
axis.set_ylabel("token accuracy")
axis.set_title("word positions decoded to the input token (nearest in the bag)", fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Four decodings of the same run
#
# Nearest token over the whole vocabulary or only over the bag of tokens, and the latter refined: a
# discrete search that replaces single tokens (and, unless `-swaps`, swaps or moves tokens and masked
# labels) only while that brings the candidate's gradient closer to the shared one, and stops once it
# reproduces it (the distance certifies the recovery).

# %%
lines = ["| decoding | text | token accuracy | exact | BLEU | gradient distance |", "|---|---|---|---|---|---|"]
for name, decoding in sentence.decodings.items():
    s = decoding["scores"]
    lines.append(f"| {name} | {vocabulary.decode(decoding['ids'][0])} | {s['token_accuracy']:.0%} | "
                 f"{s['exact_match']:.0f} | {s['bleu']:.1f} | {decoding['distance']:.2e} |")
display(Markdown("\n".join(lines)))
