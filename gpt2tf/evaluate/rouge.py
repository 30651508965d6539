"""ROUGE for summaries: our sentence splitter and the `rouge-score` package's scores, as papers report them.

Summary-level ROUGE-L (`rougeLsum`) compares texts sentence by sentence, one sentence per line; rouge-score's own
splitter needs NLTK data that cannot be downloaded everywhere, so sentences are split here. `score` is
`RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True).score(reference, prediction)` with both texts one
sentence per line, F1 × 100.
"""

import re

# Words ending in "." that do not end a sentence (titles, months, common abbreviations; single capitals are initials).
ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "sr",
    "jr",
    "st",
    "mt",
    "gen",
    "gov",
    "sen",
    "rep",
    "col",
    "lt",
    "sgt",
    "capt",
    "cmdr",
    "adm",
    "rev",
    "hon",
    "pres",
    "vs",
    "etc",
    "inc",
    "ltd",
    "co",
    "corp",
    "no",
    "vol",
    "fig",
    "approx",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "u.s",
    "u.k",
    "u.n",
    "e.g",
    "i.e",
    "a.m",
    "p.m",
    "dept",
    "univ",
    "est",
    "ft",
    "ave",
    "blvd",
    "rd",
}
_END = re.compile(r"""([.!?]+)(["'\u201d\u2019)\]]*)(\s+)""")


def split_sentences(text):
    """Sentences of `text`, in order: a break after . ! or ? (and any closing quotes or brackets) followed by white
    space and a capital letter, a digit or an opening quote — unless the word before the period is an abbreviation,
    an initial or a number's decimal point (those are followed by no space anyway)."""
    sentences, start = [], 0
    for match in _END.finditer(text):
        after = text[match.end() : match.end() + 1]
        if not after or not (after.isupper() or after.isdigit() or after in "\"'\u201c\u2018(["):
            continue
        if match.group(1) == ".":
            word = re.search(r"(\S+)$", text[start : match.start()])
            word = word.group(1).lower().strip("\"'(\u201c\u2018") if word else ""
            if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        sentence = text[start : match.end(2)].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def one_per_line(text):
    return "\n".join(split_sentences(" ".join(text.split())))


def first_sentences(text, n):
    """The first `n` sentences of `text`, joined by spaces (the paper keeps 3 of each generated summary)."""
    return " ".join(split_sentences(" ".join(text.split()))[:n])


_scorer = None


def score(reference, prediction):
    """{"rouge1", "rouge2", "rougeLsum"}: F1 × 100 of `prediction` against `reference` (texts; split here)."""
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    scores = _scorer.score(one_per_line(reference), one_per_line(prediction))
    return {name: 100.0 * value.fmeasure for name, value in scores.items()}
