"""Embedded text: sentence sets for the text attack's studies, written for this project.

``SENTENCES``: 30 sentences, 10 each of 6, 10 and 14 words, and ``LONG_SENTENCES``, 4 of 30 words, every
word in both vocabularies (:mod:`dlg_jax.data.vocabulary`); one is in the style of a conference
announcement. :data:`SENTENCE_SETS` names them by their sequence length with ``[CLS]`` and ``[SEP]``
(``sentences-8``: the 6-word ones, ``-12``, ``-16``, ``-32``); :func:`sentence_batches` cuts a set into
the private batches of a study, as :func:`dlg_jax.pipeline.target_indices` does for images.
"""

from dlg_jax.errors import DLGInputError, check_choice, check_positive_int

SENTENCES = (
    "please send me the report today",
    "we will visit our family soon",
    "she bought fresh bread this morning",
    "my brother plays music every night",
    "our team won the final game",
    "the train was late again today",
    "they moved to a small town",
    "i forgot my phone at home",
    "the new school opened last week",
    "he read a good book yesterday",
    "the bank raised rates for the second time this year",
    "we need more time to finish the project before friday",
    "she wrote a letter to her friend in another country",
    "he left the office early because his daughter was sick",
    "the doctor told him to rest and drink more water",
    "a large crowd came to the park for the concert",
    "the weather should be warm for most of the week",
    "please remember to bring your own water and food today",
    "the new law will protect workers who lose their jobs",
    "the students asked the teacher to explain the last question",
    "the conference on machine learning will be held in december in new york city",
    "the city council voted to build a new bridge across the river last year",
    "after the storm the roads were closed and many homes lost power for days",
    "our company plans to open three new stores in the south early next spring",
    "the museum will be free for children and students during the long summer break",
    "she has been working at the hospital for almost ten years as a doctor",
    "all authors are invited to send their full papers before the end of may",
    "we are happy to say that the next meeting will take place in london",
    "he left his job in the city to start a farm with his wife",
    "the children played in the garden until their mother called them in for dinner",
)
LONG_SENTENCES = (
    "after a long and difficult winter the farmers in the north were very glad to see the first warm days of "
    "spring and then began to plant their fields again",
    "the young engineer spent three long weeks testing the new software before she was quite sure that it would "
    "work safely on every machine in the large old factory there",
    "our small company will hold its annual meeting in the main hall next thursday at ten and every single "
    "member of the staff is welcome to attend and to speak",
    "the committee met on monday morning to discuss the new budget and decided to spend more money on schools "
    "and roads and parks in the poor parts of the city",
)
SENTENCE_SETS = {"sentences-8": SENTENCES[:10], "sentences-12": SENTENCES[10:20], "sentences-16": SENTENCES[20:30],
                 "sentences-32": LONG_SENTENCES}


def sentence_batches(name: str, targets: int, batch_size: int) -> list[list[str]]:
    """The first ``targets`` batches of ``batch_size`` consecutive sentences of set ``name``."""
    check_choice("sentence set", name, SENTENCE_SETS)
    targets, batch_size = check_positive_int("targets", targets), check_positive_int("batch size", batch_size)
    sentences = SENTENCE_SETS[name]
    if targets * batch_size > len(sentences):
        raise DLGInputError(f"sentence set {name!r} holds {len(sentences)} sentences; {targets} target(s) of "
                            f"{batch_size} need {targets * batch_size}")
    return [list(sentences[t * batch_size:(t + 1) * batch_size]) for t in range(targets)]
