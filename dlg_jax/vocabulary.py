"""The text models' vocabulary: a WordPiece tokenizer (``tokenizers``) over English words from ``wordfreq``.

Built offline and deterministically, stored in the package as ``dlg_jax/vocabulary.txt`` (one token
per line, line ``i`` is id ``i``) and rebuilt byte for byte by ``python -m dlg_jax.vocabulary`` (a test
checks this; the word list is wordfreq's, pinned to one release in ``pyproject.toml``). The token ids,
in order:

- 0-4: the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (BERT's);
- the characters ``a-z 0-9`` and ``PUNCTUATION`` as word-initial pieces, then ``##a .. ##9`` as
  continuation pieces (so every word made of those characters has a WordPiece split), and common
  English suffixes ``SUFFIXES`` as continuation pieces (``##ing``, ``##tion``, ...);
- the ``WORDS`` most frequent English words in ``wordfreq.top_n_list("en", ...)`` made of letters
  ``a-z`` only, in frequency order (``the, to, and, of, ...``).

Text is normalised as BERT's uncased models do (``BertNormalizer``: lowercase, accents stripped,
control characters removed), split at whitespace and punctuation (``BertPreTokenizer``) and each
word mapped by WordPiece's greedy longest-match-first rule: a listed word is one token, any other word
of the listed characters becomes pieces (``"deadline" -> dead ##line``, ``"vancouver" -> van ##c ##o
##u ##v ##er``), and a word with any other character (``"naïve"`` is fine after accent stripping;
``"€5"`` or an emoji is not) becomes the single token ``[UNK]``, which :func:`encode` rejects.
"""

import os
import re
import string

from dlg_jax.errors import DLGInputError, quote

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD, UNK, CLS, SEP, MASK = range(len(SPECIAL_TOKENS))
CHARACTERS = string.ascii_lowercase + string.digits
PUNCTUATION = ".,;:!?'\"-()/&%$@#+="
SUFFIXES = ("s", "es", "ed", "er", "ers", "est", "ing", "ly", "al", "ic", "ive", "ous", "ful", "less", "able",
            "ness", "ment", "ments", "tion", "tions", "sion", "ity", "ist", "ism", "ize", "ise", "ship", "shop",
            "line", "ary", "ery", "ance", "ence", "ant", "ent", "ure")
WORDS = 3000
PATH = os.path.join(os.path.dirname(__file__), "vocabulary.txt")


def build_vocabulary(words: int = WORDS) -> list[str]:
    """The token list above, from ``wordfreq``'s English word list (deterministic for one wordfreq release)."""
    import wordfreq

    vocab = list(SPECIAL_TOKENS) + list(CHARACTERS) + list(PUNCTUATION) + ["##" + c for c in CHARACTERS]
    vocab += ["##" + suffix for suffix in SUFFIXES if len(suffix) > 1]
    chosen = []
    for word in wordfreq.top_n_list("en", 4 * words):
        if len(chosen) == words:
            break
        if re.fullmatch("[a-z]+", word) and word not in vocab and word not in chosen:
            chosen.append(word)
    if len(chosen) < words:
        raise DLGInputError(f"wordfreq lists only {len(chosen)} usable English words; asked for {words}")
    return vocab + chosen


def make_tokenizer(vocab: list[str]):
    """A ``tokenizers.Tokenizer``: BERT's uncased normaliser and pre-tokeniser, WordPiece over ``vocab``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]",
                                           max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return tokenizer


def serialise(vocab: list[str]) -> bytes:
    """The stored form: one token per line, in id order."""
    return ("\n".join(vocab) + "\n").encode()


_LOADED = None


def load_tokenizer():
    """The tokenizer over the stored vocabulary (cached)."""
    global _LOADED
    if _LOADED is None:
        with open(PATH, encoding="utf-8") as handle:
            _LOADED = make_tokenizer(handle.read().splitlines())
    return _LOADED


def vocab_size() -> int:
    return load_tokenizer().get_vocab_size()


def encode(text: str, max_length: int) -> list[int]:
    """``[CLS] pieces... [SEP]`` ids of ``text``; :class:`DLGInputError` when the text is empty, longer
    than ``max_length`` tokens in all, or has a word that maps to ``[UNK]`` or a special token such as
    ``[MASK]`` (the message names it)."""
    if not isinstance(text, str) or not text.strip():
        raise DLGInputError("text is empty; give a sentence of English words")
    tokenizer = load_tokenizer()
    encoding = tokenizer.encode(text)
    for (start, end), token in zip(encoding.offsets, encoding.ids):
        if token < len(SPECIAL_TOKENS):
            meaning = "maps to [UNK]" if token == UNK else "is a special token"
            raise DLGInputError(
                f"text has {quote(text[start:end])}, which {meaning}; allowed: letters (accents are stripped), digits "
                f"and {PUNCTUATION} (words outside the {WORDS}-word list are split into WordPiece pieces)"
            )
    ids = [CLS, *encoding.ids, SEP]
    if len(ids) > max_length:
        raise DLGInputError(
            f"text is {len(ids)} tokens long with [CLS] and [SEP] {quote(' '.join(encoding.tokens))}; "
            f"the model takes at most {max_length}"
        )
    return ids


def decode(ids) -> str:
    """Readable text of token ids (WordPiece decoder: pieces joined, ``dead ##line -> deadline``; special
    tokens dropped)."""
    return load_tokenizer().decode([int(i) for i in ids], skip_special_tokens=True)


def tokens(ids) -> list[str]:
    tokenizer = load_tokenizer()
    return [tokenizer.id_to_token(int(i)) for i in ids]


def main() -> None:
    """Rebuild ``dlg_jax/vocabulary.txt`` (atomically)."""
    from dlg_jax.files import atomic_write_bytes

    vocab = build_vocabulary()
    atomic_write_bytes(PATH, serialise(vocab))
    print(f"wrote {PATH}: {len(vocab)} tokens")


if __name__ == "__main__":
    main()
