"""The text models' vocabulary: a WordPiece tokenizer (``tokenizers``) over English words from ``wordfreq``.

``SIZE = 30 522`` tokens, BERT's (``bert-base-uncased``) vocabulary size. Built offline and
deterministically, stored in the package as ``dlg_jax/data/vocabulary.txt`` (one token per line, line ``i``
is id ``i``; ~250 KB), rebuilt byte for byte by ``python -m dlg_jax.data.vocabulary`` (a test checks this;
the word list is wordfreq's, pinned to one release in ``pyproject.toml``), and checked against
``SHA256`` whenever it is loaded: a file that does not match is an error, not a silently different
model. The token ids, in order:

- 0-4: the special tokens ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (BERT's);
- the characters ``a-z 0-9`` and ``PUNCTUATION`` as word-initial pieces, then ``##a .. ##9`` as
  continuation pieces (so every word made of those characters has a WordPiece split), and common
  English suffixes ``SUFFIXES`` as continuation pieces (``##ing``, ``##tion``, ...);
- the most frequent English words in ``wordfreq.top_n_list("en", ...)`` made of letters ``a-z``
  only, in frequency order (``the, to, and, of, ...``), as many as fill ``SIZE`` tokens (30 386 words).

Smaller vocabularies of the same construction (:func:`build_vocabulary` with ``size``, e.g. the 3 131
tokens this project used first) are built on the fly for measurements (:class:`Vocabulary`); they need
``wordfreq`` (the ``text`` extra).

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
SIZE = 30522
SHA256 = "82822ecd523e66124f414ca9eb002279e4a896e71697ca6efa6287f19e57146d"
PATH = os.path.join(os.path.dirname(__file__), "vocabulary.txt")


def build_vocabulary(size: int = SIZE) -> list[str]:
    """The token list above, ``size`` tokens, from ``wordfreq``'s English word list (deterministic for one
    wordfreq release)."""
    import wordfreq

    vocab = list(SPECIAL_TOKENS) + list(CHARACTERS) + list(PUNCTUATION) + ["##" + c for c in CHARACTERS]
    vocab += ["##" + suffix for suffix in SUFFIXES if len(suffix) > 1]
    words = size - len(vocab)
    if words < 1:
        raise DLGInputError(f"vocabulary size must exceed the {len(vocab)} character and suffix tokens, got {size}")
    taken = set(vocab)
    for word in wordfreq.top_n_list("en", 4 * words):
        if len(vocab) == size:
            break
        if re.fullmatch("[a-z]+", word) and word not in taken:
            vocab.append(word)
            taken.add(word)
    if len(vocab) < size:
        raise DLGInputError(f"wordfreq lists only {len(vocab)} usable tokens; asked for {size}")
    return vocab


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


def read_stored(path: str | None = None, sha256: str = SHA256) -> list[str]:
    """The token list in ``path`` (default :data:`PATH`); :class:`DLGInputError` unless its SHA-256 is
    ``sha256``."""
    import hashlib

    path = PATH if path is None else path
    with open(path, "rb") as handle:
        data = handle.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DLGInputError(f"vocabulary file {path} has SHA-256 {digest[:16]}..., not the stored {sha256[:16]}...; "
                            f"rebuild it with python -m dlg_jax.data.vocabulary")
    return data.decode("utf-8").splitlines()


class Vocabulary:
    """A token list and its tokenizer: ``encode`` (text -> ``[CLS] ids [SEP]``), ``decode``, ``tokens``."""

    def __init__(self, tokens: list[str]):
        self.tokenizer = make_tokenizer(tokens)
        self.size = len(tokens)

    def encode(self, text: str, max_length: int) -> list[int]:
        """``[CLS] pieces... [SEP]`` ids of ``text``; :class:`DLGInputError` when the text is empty, longer
        than ``max_length`` tokens in all, or has a word that maps to ``[UNK]`` or a special token such as
        ``[MASK]`` (the message names it)."""
        if not isinstance(text, str) or not text.strip():
            raise DLGInputError("text is empty; give a sentence of English words")
        encoding = self.tokenizer.encode(text)
        for (start, end), token in zip(encoding.offsets, encoding.ids):
            if token < len(SPECIAL_TOKENS):
                meaning = "maps to [UNK]" if token == UNK else "is a special token"
                raise DLGInputError(
                    f"text has {quote(text[start:end])}, which {meaning}; allowed: letters (accents are stripped), "
                    f"digits and {PUNCTUATION} (words outside the {self.size}-token vocabulary are split into "
                    f"WordPiece pieces)"
                )
        ids = [CLS, *encoding.ids, SEP]
        if len(ids) > max_length:
            raise DLGInputError(
                f"text {quote(text)} is {len(ids)} tokens long with [CLS] and [SEP] {quote(' '.join(encoding.tokens))}; "
                f"the model takes at most {max_length}"
            )
        return ids

    def decode(self, ids) -> str:
        """Readable text of token ids (WordPiece decoder: pieces joined, ``dead ##line -> deadline``;
        special tokens dropped)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def tokens(self, ids) -> list[str]:
        return [self.tokenizer.id_to_token(int(i)) for i in ids]


_STORED = None
_BUILT: dict[int, Vocabulary] = {}


def stored() -> Vocabulary:
    """The stored vocabulary (hash-checked, cached)."""
    global _STORED
    if _STORED is None:
        _STORED = Vocabulary(read_stored())
    return _STORED


def of_size(size: int | None) -> Vocabulary:
    """The stored vocabulary (``size`` ``None`` or :data:`SIZE`), else one of ``size`` tokens built by
    :func:`build_vocabulary` (cached; needs ``wordfreq``)."""
    if size is None or size == SIZE:
        return stored()
    if size not in _BUILT:
        _BUILT[size] = Vocabulary(build_vocabulary(size))
    return _BUILT[size]


def vocab_size() -> int:
    return stored().size


def encode(text: str, max_length: int) -> list[int]:
    """:meth:`Vocabulary.encode` with the stored vocabulary."""
    return stored().encode(text, max_length)


def decode(ids) -> str:
    """:meth:`Vocabulary.decode` with the stored vocabulary."""
    return stored().decode(ids)


def tokens(ids) -> list[str]:
    return stored().tokens(ids)


def main() -> None:
    """Rebuild ``dlg_jax/data/vocabulary.txt`` (atomically) and print its SHA-256 (:data:`SHA256` must equal it)."""
    import hashlib

    from dlg_jax.files import atomic_write_bytes

    data = serialise(build_vocabulary())
    atomic_write_bytes(PATH, data)
    digest = hashlib.sha256(data).hexdigest()
    count = data.count(b"\n")
    print(f"wrote {PATH}: {count} tokens, SHA-256 {digest}"
          + ("" if digest == SHA256 else " (differs from SHA256 in dlg_jax/data/vocabulary.py: update it)"))


if __name__ == "__main__":
    main()
