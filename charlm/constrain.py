"""Constraints for decoding poems: forms, acrostics, rhyme, tonal patterns and novelty.

Every constraint is enforced while decoding (charlm.sample) by masking the next-character
distribution — never by sampling until lucky and never by editing text afterwards. Each poem in
a batch has a small state (``Slot``: which line, which position, the rhyme group chosen so far,
its tonal pattern); from it ``PoemConstraint.mask`` builds the set of characters allowed next.

How characters the rhyme table does not cover are treated under ``--tones``: they are allowed
only at the free positions (1st and 3rd, and 5th of seven-character lines), where either tone is
acceptable; positions with a required tone take only characters the table classifies with it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from charlm.errors import CharLMError
from charlm.vocab import EOS_ID, UNK_ID, Vocab, is_han

COMMA, PERIOD = "，", "。"
LINE_ENDS = "，。？！；"


@dataclass(frozen=True)
class PoemSpec:
    """What the poem must satisfy; ``form`` is a charlm.poetry.Form or None."""

    form: object | None = None
    acrostic: str = ""
    rhyme: bool = False
    rhyme_first: bool = False
    tones: bool = False
    novel: bool = False

    @property
    def constrained(self) -> bool:
        """True when any rule applies (rhyme and tones without a form are refused by PoemConstraint)."""
        return bool(self.form or self.acrostic or self.novel or self.rhyme or self.rhyme_first or self.tones)


@dataclass(frozen=True)
class Slot:
    """Where one poem stands."""

    line: int = 0
    pos: int = 0  # characters written in the current line
    text: str = ""  # the current line so far
    pattern: tuple[str, ...] | None = None  # per-line '平'/'仄' strings
    pattern_name: str | None = None
    rhyme_lines: frozenset[int] = frozenset()
    groups: frozenset[str] | None = None  # level-tone groups still possible for the rhyme
    used_rhymes: frozenset[str] = frozenset()
    done: bool = False
    novel_ok: bool = True


class PoemConstraint:
    """Masks over the vocabulary for a ``PoemSpec``; built once per vocabulary."""

    def __init__(self, vocab: Vocab, spec: PoemSpec, table=None, lines: set[str] | None = None) -> None:
        from charlm import poetry

        self.vocab, self.spec = vocab, spec
        V = len(vocab)
        self.V = V
        self.han = torch.tensor([is_han(c) for c in vocab.chars])
        self.han[UNK_ID] = False
        self.free: set[int] = set()
        self.form = spec.form
        if (spec.rhyme or spec.tones) and spec.form is None:
            raise CharLMError("--rhyme and --tones need --form (五绝, 七绝, 五律 or 七律)")
        if spec.rhyme_first and not spec.rhyme:
            raise CharLMError("--rhyme-first needs --rhyme")
        if spec.acrostic:
            missing = vocab.unknown(spec.acrostic)
            if missing:
                raise CharLMError(f"acrostic characters not in this model's vocabulary: {' '.join(missing)}")
            if not all(is_han(c) for c in spec.acrostic):
                raise CharLMError("--acrostic takes Han characters only, one per line")
            if spec.form is not None and len(spec.acrostic) != spec.form.lines:
                raise CharLMError(f"--acrostic {spec.acrostic} has {len(spec.acrostic)} characters but "
                                  f"{spec.form.name} has {spec.form.lines} lines")
        for p in (COMMA, PERIOD):
            if p not in vocab:
                raise CharLMError(f"this model's vocabulary lacks {p}, so it cannot write poem forms")
        self.comma, self.period = vocab.encode(COMMA)[0], vocab.encode(PERIOD)[0]
        self.line_end_ids = [i for i, c in enumerate(vocab.chars) if c in LINE_ENDS]
        if spec.rhyme or spec.tones:
            self.table = table or poetry.RhymeTable.default()
            tones = [self.table.tones(c) if self.han[i] else frozenset() for i, c in enumerate(vocab.chars)]
            self.ping = torch.tensor(["平" in t for t in tones])
            self.ze = torch.tensor(["仄" in t for t in tones])
            self.groups_of = [self.table.level_groups(c) if self.han[i] else frozenset()
                              for i, c in enumerate(vocab.chars)]
            self.group_mask: dict[str, torch.Tensor] = {}
            for i, gs in enumerate(self.groups_of):
                for g in gs:
                    self.group_mask.setdefault(g, torch.zeros(V, dtype=torch.bool))[i] = True
            # a first rhyme character must leave its group enough members for the other rhyme lines
            need = spec.form.lines // 2 + (1 if spec.rhyme_first else 0)
            big = {g for g, gm in self.group_mask.items() if int(gm.sum()) >= need}
            self.rhymable = torch.tensor([bool(g & big) for g in self.groups_of])
            self.free = set(poetry.free_positions(spec.form.chars))
        # novelty: for each training line minus its last character, the last characters that would copy it
        self.banned: dict[str, list[int]] = {}
        self.lines = lines or set()
        if spec.novel:
            if not lines:
                raise CharLMError("this checkpoint does not keep its training lines, so --novel cannot be checked")
            for line in lines:
                if len(line) >= 1 and line[-1] in vocab:
                    self.banned.setdefault(line[:-1], []).append(vocab.encode(line[-1])[0])

    # -- starting states -----------------------------------------------------------------------
    def start_slots(self) -> list[Slot]:
        """The possible starting states: one per tonal pattern under --tones, else one."""
        spec = self.spec
        if spec.form is None:
            return [Slot()]
        n = spec.form.lines
        default_rhymes = frozenset(i for i in range(n) if i % 2 == 1 or (i == 0 and spec.rhyme_first))
        if not spec.tones:
            return [Slot(rhyme_lines=default_rhymes if spec.rhyme else frozenset())]
        from charlm import poetry

        slots = []
        for p in poetry.patterns(spec.form):
            rhymes = frozenset(p.rhyme_lines)
            if (0 in rhymes) != spec.rhyme_first:
                continue
            slots.append(Slot(pattern=tuple(p.lines), pattern_name=p.name,
                              rhyme_lines=rhymes if spec.rhyme else frozenset()))
        return slots

    # -- the mask ------------------------------------------------------------------------------
    def mask(self, s: Slot) -> torch.Tensor:
        """Bool (V,): characters allowed next in state ``s``."""
        V, spec = self.V, self.spec
        m = torch.zeros(V, dtype=torch.bool)
        if s.done:
            m[EOS_ID] = True
            return m
        form = spec.form
        if form is None:  # acrostic or novelty without a form: lines end at any line-ending mark
            n_lines = len(spec.acrostic)
            if spec.acrostic and s.line >= n_lines:
                m[EOS_ID] = True
                return m
            if s.pos == 0:
                if spec.acrostic:
                    m[self.vocab.encode(spec.acrostic[s.line])[0]] = True
                else:
                    m[:] = self.han
                    m[EOS_ID] = s.line > 0
                return m
            m[:] = True
            m[UNK_ID] = False
            if spec.acrostic:
                m[EOS_ID] = False  # the poem ends only after its last acrostic line
                if s.line == n_lines - 1:  # which closes with 。
                    m[self.line_end_ids] = False
                    m[self.period] = True
            if spec.novel and s.text in self.lines:  # closing here would copy a training line
                m[self.line_end_ids] = False
                m[EOS_ID] = False
            return m
        C = form.chars
        if s.line >= form.lines:
            m[EOS_ID] = True
            return m
        if s.pos == C:
            m[self.comma if s.line % 2 == 0 else self.period] = True
            return m
        m[:] = self.han
        if spec.acrostic and s.pos == 0:
            m[:] = False
            m[self.vocab.encode(spec.acrostic[s.line])[0]] = True
        if s.pattern is not None and s.pos not in self.free:  # free: 0-based 一三五不论
            m &= self.ping if s.pattern[s.line][s.pos] == "平" else self.ze
        if s.pos == C - 1:
            if s.line in s.rhyme_lines:
                if s.groups is None:
                    m &= self.rhymable
                else:
                    g = torch.zeros(V, dtype=torch.bool)
                    for name in s.groups:
                        g |= self.group_mask[name]
                    m &= g
                for i in self._ids(s.used_rhymes):
                    m[i] = False
            if spec.novel and s.text in self.banned:
                m[self.banned[s.text]] = False
        return m

    def _ids(self, chars) -> list[int]:
        return [self.vocab.encode(c)[0] for c in chars]

    # -- moving on -----------------------------------------------------------------------------
    def advance(self, s: Slot, token: int) -> Slot:
        if s.done:
            return s
        if token == EOS_ID:
            return replace(s, done=True)
        ch = self.vocab.chars[token]
        form = self.spec.form
        if form is None:
            if s.pos > 0 and ch in LINE_ENDS:
                return replace(s, line=s.line + 1, pos=0, text="")
            return replace(s, pos=s.pos + 1, text=s.text + ch)
        if s.pos == form.chars:  # the punctuation closing a line
            return replace(s, line=s.line + 1, pos=0, text="")
        s2 = replace(s, pos=s.pos + 1, text=s.text + ch)
        if s.pos == form.chars - 1 and s.line in s.rhyme_lines:
            gs = self.groups_of[token]
            s2 = replace(s2, groups=gs if s.groups is None else s.groups & gs, used_rhymes=s.used_rhymes | {ch})
        return s2

    def feed_prompt(self, prompt: str) -> list[Slot]:
        """Starting states that the prompt fits, advanced through it; a clear error if none does."""
        slots = self.start_slots()
        ids = self.vocab.encode(prompt)
        ok = []
        why = ""
        for s in slots:
            for i, (ch, t) in enumerate(zip(prompt, ids)):
                if not self.mask(s)[t]:
                    why = why or f"{ch!r} (character {i + 1})"
                    break
                s = self.advance(s, t)
            else:
                ok.append(s)
        if not ok:
            what = self.spec.form.name if self.spec.form is not None else "the acrostic"
            extra = " and its tonal pattern" if self.spec.tones else ""
            raise CharLMError(f"the prompt {prompt!r} cannot fit {what}{extra}: it fails at {why}")
        return ok

    def steps_needed(self) -> int | None:
        f = self.spec.form
        return None if f is None else f.lines * (f.chars + 1) + 1
