"""Judge poems: form, rhyme and tonal validity (charlm.poetry, the same rules the decoder
enforces), diversity, and how much is copied from the training text.

- distinct-1 / distinct-2: distinct Han characters / character bigrams (within a line) over all
  the poems, divided by their total count — 1.0 means nothing repeats.
- repetition: the share of poems in which a Han bigram (within a line) occurs twice, and the count
  of each poem's most frequent character — beside the same figures for the training corpus.
- copy rate: the share of generated lines (clauses between punctuation marks) that appear verbatim
  among the training text's lines; longest copied span: the longest run of characters of a poem's
  line found inside some training line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from charlm import poetry
from charlm.vocab import is_han


@dataclass(frozen=True)
class PoemReport:
    text: str
    form: str | None
    form_valid: bool
    rhyme_valid: bool | None
    rhyme_group: str | None
    tone_agreement: float | None
    tone_valid: bool | None
    pattern: str | None
    copied_lines: int
    lines: int
    longest_copy: str
    repeated_bigram: bool  # a Han bigram occurs twice within the poem (poetry.repetition)
    top_char_count: int  # uses of the poem's most frequent Han character


@dataclass(frozen=True)
class Summary:
    poems: int
    form_valid: float
    rhyme_valid: float
    tone_agreement: float | None  # mean over the poems that have a form
    tone_valid: float
    distinct_1: float
    distinct_2: float
    copy_rate: float | None
    longest_copy: str
    repeated_bigram: float  # share of poems with a repeated bigram
    top_char_count: float  # mean over the poems of their most frequent character's count
    top_char_4: float  # share of poems using one character four times or more

    def to_dict(self) -> dict:
        return asdict(self)


def _longest_copy(line: str, corpus: str) -> str:
    best = ""
    for i in range(len(line)):
        j = i + len(best) + 1
        while j <= len(line) and line[i:j] in corpus:
            best = line[i:j]
            j += 1
    return best


def judge(poems: list[str], form=None, train_lines: set[str] | None = None, table=None) -> tuple[list[PoemReport], Summary]:
    table = table or poetry.RhymeTable.default()
    corpus = "\n".join(sorted(train_lines)) if train_lines else None
    reports = []
    tone_scores: list[float] = []
    uni, bi = [], []
    for text in poems:
        c = poetry.check_poem(text, form, table)
        ordered = [l for l in poetry.split_lines(text) if l]
        copied = sum(1 for l in ordered if train_lines and l in train_lines)
        longest = max((_longest_copy(l, corpus) for l in ordered), key=len, default="") if corpus else ""
        reports.append(PoemReport(text, c.form, c.form_valid, c.rhyme_valid, c.rhyme_group, c.tone_agreement,
                                  c.tone_valid, c.pattern, copied, len(ordered), longest,
                                  *poetry.repetition(text)))
        if c.tone_agreement is not None:
            tone_scores.append(c.tone_agreement)
        for l in ordered:
            han = [ch for ch in l if is_han(ch)]
            uni.extend(han)
            bi.extend(a + b for a, b in zip(han, han[1:]))
    n = max(1, len(reports))
    total_lines = sum(r.lines for r in reports)
    summary = Summary(
        poems=len(reports),
        form_valid=sum(r.form_valid for r in reports) / n,
        rhyme_valid=sum(bool(r.rhyme_valid) for r in reports) / n,
        tone_agreement=sum(tone_scores) / len(tone_scores) if tone_scores else None,
        tone_valid=sum(bool(r.tone_valid) for r in reports) / n,
        distinct_1=len(set(uni)) / max(1, len(uni)),
        distinct_2=len(set(bi)) / max(1, len(bi)),
        copy_rate=sum(r.copied_lines for r in reports) / max(1, total_lines) if train_lines else None,
        longest_copy=max((r.longest_copy for r in reports), key=len, default=""),
        repeated_bigram=sum(r.repeated_bigram for r in reports) / n,
        top_char_count=sum(r.top_char_count for r in reports) / n,
        top_char_4=sum(r.top_char_count >= 4 for r in reports) / n,
    )
    return reports, summary


def poem_checks(text: str, form=None) -> dict:
    """The checks `charlm generate --json` prints beside each poem."""
    c = poetry.check_poem(text, form)
    repeated, top = poetry.repetition(text)
    return {"form": c.form, "form_valid": c.form_valid, "rhyme_valid": c.rhyme_valid, "rhyme_group": c.rhyme_group,
            "tone_agreement": c.tone_agreement, "tone_valid": c.tone_valid, "pattern": c.pattern,
            "repeated_bigram": repeated, "top_char_count": top}


@dataclass(frozen=True)
class Repetition:
    """The repetition figures of Summary for a set of poems (e.g. the training corpus)."""

    poems: int
    repeated_bigram: float
    top_char_count: float
    top_char_4: float


def repetition_of(poems: list[str]) -> Repetition:
    found = [poetry.repetition(p) for p in poems]
    n = max(1, len(found))
    return Repetition(len(found), sum(r for r, _ in found) / n, sum(t for _, t in found) / n,
                      sum(t >= 4 for _, t in found) / n)
