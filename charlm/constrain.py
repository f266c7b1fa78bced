"""Constraints for decoding poems: forms, acrostics, rhyme, tonal patterns and novelty.

Every constraint is enforced while decoding (charlm.sample) by masking the next-character
distribution — never by sampling until lucky and never by editing text afterwards. The decoder
keeps the state of all its rows as tensors (``Rows``: which line, which position, the rhyme groups
still possible, the tonal pattern), and ``PoemConstraint.masks`` builds the (B, V) allowed set for
every row at once, without a Python loop over rows. ``Slot`` and ``mask`` are the same rules for one
poem, written plainly: the reference that tests compare the batched masks with, and what
``feed_prompt`` uses to explain why a prompt does not fit. The verse rules themselves (line marks,
patterns, 一三五不论) belong to charlm.poetry; this module only turns them into masks.

How characters the rhyme table does not cover are treated under ``--tones``: they are allowed
only at the free positions (1st and 3rd, and 5th of seven-character lines), where either tone is
acceptable; positions with a required tone take only characters the table classifies with it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import lru_cache

import torch

from charlm.errors import CharLMError
from charlm.poetry import (COMMA, EITHER, FULL_STOP as PERIOD, LEVEL, LINE_ENDS, OBLIQUE, known_marks,
                           rhyme_keys)
from charlm.vocab import EOS_ID, UNK_ID, Vocab, is_han


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
    pattern: tuple[str, ...] | None = None  # per-line required tones (平, 仄, 中 = free) under --tones
    pattern_name: str | None = None
    rhyme_lines: frozenset[int] = frozenset()
    groups: tuple[frozenset[str] | None, ...] = ()  # per rhyme set, the keys still possible (None: no rhyme yet)
    used_rhymes: frozenset[str] = frozenset()
    done: bool = False
    novel_ok: bool = True
    choice: int = 0  # which of PoemConstraint.choices (the form's patterns) the poem follows


# -- the batched state ------------------------------------------------------------------------

@dataclass
class Rows:
    """The state of B poems as tensors, so that ``PoemConstraint.masks`` and ``advance_rows`` work
    on all rows at once. The fields mirror ``Slot``: ``choice`` indexes ``PoemConstraint.choices``
    (the pattern whose rhymes, and under --tones whose tones, the row follows), ``pattern`` is the
    same index under --tones and −1 without; ``rhyme_set[b, i]`` is the rhyme set line i belongs to
    (−1: it does not rhyme); ``groups[b, s]`` are the rhyme keys still open to set s (all True
    until its first rhyme is written, ``rhymed[b, s]`` False); ``used`` the rhyme characters
    already written. ``texts`` (the current line) is kept only for --novel, whose training lines
    are strings."""

    line: torch.Tensor  # (B,) long
    pos: torch.Tensor  # (B,) long
    done: torch.Tensor  # (B,) bool
    pattern: torch.Tensor  # (B,) long
    choice: torch.Tensor  # (B,) long
    rhyme_set: torch.Tensor  # (B, lines) long
    rhymed: torch.Tensor  # (B, S) bool
    groups: torch.Tensor  # (B, S, G) bool
    used: torch.Tensor  # (B, V) bool
    texts: list[str] | None = None

    def take(self, index: torch.Tensor) -> "Rows":
        """The rows at ``index`` (beam search reorders and copies rows)."""
        out = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "texts"}
        texts = None if self.texts is None else [self.texts[i] for i in index.tolist()]
        return Rows(**out, texts=texts)


_TONE_CODE = {EITHER: 0, LEVEL: 1, OBLIQUE: 2}


class _Batched:
    """The batched half of PoemConstraint (mixed in): Slots → Rows, masks and advance for B rows."""

    def _tables(self) -> None:
        spec, V, form = self.spec, self.V, self.form
        self.pattern_names = [p.name for p in self.choices] if spec.tones else []
        n_lines = form.lines if form is not None else 1
        width = max(form.lengths) if form is not None else 1
        # (P, lines, width): 1 where the pattern wants 平, 2 for 仄, 0 where the tone is free
        self.pat_tone = torch.zeros(max(1, len(self.pattern_names)), n_lines, width, dtype=torch.long)
        for k, p in enumerate(self.choices if spec.tones else []):
            for i, tones in enumerate(p.tones):
                self.pat_tone[k, i, : len(tones)] = torch.tensor([_TONE_CODE[t] for t in tones])
        if self.pattern_names:  # (3, V) by tone code: any character, the level ones, the oblique ones
            self.tone_ok = torch.stack([torch.ones(V, dtype=torch.bool), self.ping, self.ze])
        self.lengths_t = torch.tensor(form.lengths if form is not None else [1], dtype=torch.long)
        self.mark_ids = torch.tensor(self.vocab.encode(self.marks) if form is not None else [self.period])
        G = len(self.group_names)
        self.groups_matrix = {t: (torch.stack([self.group_mask[t].get(g, torch.zeros(V, dtype=torch.bool))
                                               for g in self.group_names]) if G else torch.zeros(0, V, dtype=torch.bool))
                              for t in self.group_mask}  # tone → (G, V)
        self.acrostic_ids = torch.tensor(self.vocab.encode(spec.acrostic) or [0], dtype=torch.long)
        self.is_line_end = torch.zeros(V, dtype=torch.bool)
        self.is_line_end[self.line_end_ids] = True

    def rows(self, slots: list[Slot]) -> Rows:
        """Slots (e.g. from ``feed_prompt``) as a batched state."""
        n_lines = self.form.lines if self.form is not None else 1
        S, G = self.n_sets, len(self.group_names)
        pattern = [self.pattern_names.index(s.pattern_name) if s.pattern is not None else -1 for s in slots]
        rhyme_set = [[self.set_of[s.choice][i] if i in s.rhyme_lines else -1 for i in range(n_lines)] for s in slots]
        opened = [[s.groups[k] if k < len(s.groups) else None for k in range(S)] for s in slots]
        groups = torch.tensor([[[o is None or g in o for g in self.group_names] for o in row] for row in opened],
                              dtype=torch.bool).reshape(len(slots), S, G)
        used = torch.zeros(len(slots), self.V, dtype=torch.bool)
        for b, s in enumerate(slots):
            used[b, self._ids(s.used_rhymes)] = True
        return Rows(
            line=torch.tensor([s.line for s in slots], dtype=torch.long),
            pos=torch.tensor([s.pos for s in slots], dtype=torch.long),
            done=torch.tensor([s.done for s in slots], dtype=torch.bool),
            pattern=torch.tensor(pattern, dtype=torch.long),
            choice=torch.tensor([s.choice for s in slots], dtype=torch.long),
            rhyme_set=torch.tensor(rhyme_set, dtype=torch.long).reshape(len(slots), n_lines),
            rhymed=torch.tensor([[o is not None for o in row] for row in opened], dtype=torch.bool).reshape(len(slots), S),
            groups=groups, used=used,
            texts=[s.text for s in slots] if self.spec.novel else None,
        )

    def pattern_name(self, rows: Rows, b: int) -> str | None:
        p = int(rows.pattern[b])
        return self.pattern_names[p] if p >= 0 else None

    def masks(self, r: Rows) -> torch.Tensor:
        """Bool (B, V): the characters allowed next in each row; row b equals ``mask(slot_b)``."""
        m = self._free_masks(r) if self.spec.form is None else self._form_masks(r)
        eos_only = torch.zeros(self.V, dtype=torch.bool)
        eos_only[EOS_ID] = True
        return torch.where(r.done[:, None], eos_only, m)

    def _novel_hits(self, r: Rows, table) -> torch.Tensor:
        return torch.tensor([t in table for t in r.texts], dtype=torch.bool)

    def _free_masks(self, r: Rows) -> torch.Tensor:
        spec, B, V = self.spec, r.line.numel(), self.V
        n_lines = len(spec.acrostic)
        m = torch.ones(B, V, dtype=torch.bool)
        m[:, UNK_ID] = False
        start = r.pos == 0
        if spec.acrostic:
            m[:, EOS_ID] = False  # the poem ends only after its last acrostic line
            last = r.line == n_lines - 1  # which closes with 。
            m[last] &= ~self.is_line_end
            m[last, self.period] = True
            first = torch.zeros(B, V, dtype=torch.bool)
            first[torch.arange(B), self.acrostic_ids[r.line.clamp(max=n_lines - 1)]] = True
            m = torch.where(start[:, None], first, m)
        else:
            first = self.han[None].expand(B, V).clone()
            first[:, EOS_ID] = r.line > 0
            m = torch.where(start[:, None], first, m)
        if spec.novel:
            hit = self._novel_hits(r, self.lines) & ~start  # closing here would copy a training line
            m[hit] &= ~self.is_line_end
            m[hit, EOS_ID] = False
        if spec.acrostic:
            over = r.line >= n_lines
            m[over] = False
            m[over, EOS_ID] = True
        return m

    def _rhyme_state(self, r: Rows, line: torch.Tensor):
        """Each row's rhyme set for its current line (−1: none), clamped to an index, and the tone
        that line rhymes on, as an index into ``rhyme_tones``."""
        k = r.rhyme_set.gather(1, line[:, None])[:, 0]
        return k, k.clamp(min=0), self.rhyme_tone_t[r.choice, line]

    def _keys_of(self, tone_idx: torch.Tensor, per_tone) -> torch.Tensor:
        """Row b takes ``per_tone[t]`` (B, …) of its line's rhyme tone t."""
        out = per_tone[0]
        for t in range(1, len(per_tone)):
            out = torch.where((tone_idx == t).reshape(-1, *[1] * (out.dim() - 1)), per_tone[t], out)
        return out

    def _form_masks(self, r: Rows) -> torch.Tensor:
        spec, form, B, V = self.spec, self.spec.form, r.line.numel(), self.V
        line = r.line.clamp(max=form.lines - 1)
        length = self.lengths_t[line]  # (B,)
        m = self.han[None].expand(B, V).clone()
        if spec.acrostic:
            first = torch.zeros(B, V, dtype=torch.bool)
            first[torch.arange(B), self.acrostic_ids[line]] = True
            m = torch.where((r.pos == 0)[:, None], first, m)
        if self.pattern_names:
            want = self.pat_tone[r.pattern.clamp(min=0), line, r.pos.clamp(max=self.pat_tone.size(2) - 1)]  # (B,)
            m &= self.tone_ok[torch.where(r.pattern >= 0, want, 0)]  # a row without a pattern takes any tone
        at_end = r.pos == length - 1
        k, kk, tone_idx = self._rhyme_state(r, line)
        rhyming = at_end & (k >= 0)
        if rhyming.any():
            if len(self.group_names):
                rows = torch.arange(B)
                open_keys = r.groups[rows, kk].float()  # (B, G)
                open_chars = self._keys_of(tone_idx, [(open_keys @ self.groups_matrix[t].float()) > 0
                                                      for t in self.rhyme_tones])  # (B, V)
                rhymable = self.rhymable[r.choice, line]  # (B, V)
                rhyme_ok = torch.where(r.rhymed[rows, kk][:, None], open_chars, rhymable)
            else:
                rhyme_ok = torch.zeros(B, V, dtype=torch.bool)
            m = torch.where(rhyming[:, None], m & rhyme_ok & ~r.used, m)
        if spec.novel:
            hit = at_end & self._novel_hits(r, self.banned)
            for b in torch.nonzero(hit)[:, 0].tolist():
                m[b, self.banned[r.texts[b]]] = False
        at_mark = (r.pos == length).nonzero()[:, 0]  # rows whose line is written: its mark and nothing else
        if len(at_mark):
            m[at_mark] = False
            m[at_mark, self.mark_ids[line[at_mark]]] = True
        over = r.line >= form.lines
        m[over] = False
        m[over, EOS_ID] = True
        return m

    def advance_rows(self, r: Rows, tokens: torch.Tensor) -> Rows:
        """Every row moved on by its token (B,); finished rows stay as they are."""
        live = ~r.done
        form = self.spec.form
        is_eos = tokens == EOS_ID
        if form is None:
            closes = live & (r.pos > 0) & self.is_line_end[tokens]
        else:
            line = r.line.clamp(max=form.lines - 1)
            closes = live & (r.pos == self.lengths_t[line])
        step = live & ~is_eos & ~closes
        if form is not None and len(self.group_names):
            k, kk, tone_idx = self._rhyme_state(r, line)
            rhymes = step & (r.pos == self.lengths_t[line] - 1) & (k >= 0)
            if rhymes.any():
                rows = torch.arange(tokens.numel())
                tok_groups = self._keys_of(tone_idx, [self.groups_matrix[t][:, tokens].T for t in self.rhyme_tones])
                new_groups = torch.where(r.rhymed[rows, kk][:, None], r.groups[rows, kk] & tok_groups, tok_groups)
                r.groups, r.rhymed = r.groups.clone(), r.rhymed.clone()
                r.groups[rows[rhymes], kk[rhymes]] = new_groups[rhymes]
                r.rhymed[rows[rhymes], kk[rhymes]] = True
                r.used = r.used.clone()
                r.used[rhymes, tokens[rhymes]] = True
        if r.texts is not None:
            chars = self.vocab.chars
            r.texts = ["" if c else (t + chars[k] if s else t)
                       for t, c, s, k in zip(r.texts, closes.tolist(), step.tolist(), tokens.tolist())]
        r.line = r.line + closes.long()
        r.pos = torch.where(closes, 0, r.pos + step.long())
        r.done = r.done | (live & is_eos)
        return r


@lru_cache(maxsize=8)
def _vocab_rhymes(table, chars: tuple[str, ...], scheme: str, rhyme_tones: tuple[str, ...]):
    """A vocabulary's tones and rhymes, worked out once per (table, vocabulary, scheme, tones): a
    constraint is built for every decoding call (compose, eval --generate), and this is the Python
    loop over the vocabulary. Returns level and oblique masks (V,), keys_of[t][i] (what character i
    can rhyme as on tone t: 平水韵 groups or 词林正韵 parts) and group_mask[t][key] (V,); read only."""
    han = [is_han(c) and i != UNK_ID for i, c in enumerate(chars)]
    tones = [table.tones(c) if h else frozenset() for c, h in zip(chars, han)]
    ping = torch.tensor([LEVEL in t for t in tones])
    ze = torch.tensor([OBLIQUE in t for t in tones])
    keys_of = {t: [rhyme_keys(c, t, table, scheme) if h else frozenset() for c, h in zip(chars, han)]
               for t in rhyme_tones}
    group_mask: dict[str, dict[str, torch.Tensor]] = {}
    for t, keys in keys_of.items():
        members: dict[str, list[int]] = {}
        for i, ks in enumerate(keys):
            for g in ks:
                members.setdefault(g, []).append(i)
        masks = group_mask.setdefault(t, {})
        for g, ids in members.items():
            masks[g] = torch.zeros(len(chars), dtype=torch.bool)
            masks[g][ids] = True
    return ping, ze, keys_of, group_mask


class PoemConstraint(_Batched):
    """Masks over the vocabulary for a ``PoemSpec``; built once per vocabulary.

    Everything about the form is read from its data (charlm.poetry.Form): the line lengths and
    marks, the patterns' tones (中 free), rhyme sets and rhyme tones, and the rhyme scheme whose
    keys line ends must share (平水韵 groups for regulated verse, 词林正韵 parts for a tune)."""

    def __init__(self, vocab: Vocab, spec: PoemSpec, table=None, lines: set[str] | None = None) -> None:
        self.vocab, self.spec = vocab, spec
        V = len(vocab)
        self.V = V
        self.han = torch.tensor([is_han(c) for c in vocab.chars])
        self.han[UNK_ID] = False
        self.form = form = spec.form
        if (spec.rhyme or spec.tones) and form is None:
            raise CharLMError("--rhyme and --tones need --form (五绝, 七绝, 五律 or 七律, or a tune: --list-forms)")
        if spec.rhyme_first and not spec.rhyme:
            raise CharLMError("--rhyme-first needs --rhyme")
        if spec.acrostic:
            missing = vocab.unknown(spec.acrostic)
            if missing:
                raise CharLMError(f"acrostic characters not in this model's vocabulary: {' '.join(missing)}")
            if not all(is_han(c) for c in spec.acrostic):
                raise CharLMError("--acrostic takes Han characters only, one per line")
            if form is not None and len(spec.acrostic) != form.lines:
                raise CharLMError(f"--acrostic {spec.acrostic} has {len(spec.acrostic)} characters but "
                                  f"{form.name} has {form.lines} lines")
        for p in (COMMA, PERIOD):
            if p not in vocab:
                raise CharLMError(f"this model's vocabulary lacks {p}, so it cannot write poem forms")
        self.comma, self.period = vocab.encode(COMMA)[0], vocab.encode(PERIOD)[0]
        self.line_end_ids = [i for i, c in enumerate(vocab.chars) if c in LINE_ENDS]
        # the form's marks as this model writes them: a ci's 、 is written ， by a model that never saw 、
        self.marks = known_marks(form.marks, "".join(vocab.chars[i] for i in self.line_end_ids)) if form else ""
        missing = [c for c in dict.fromkeys(self.marks) if c not in vocab]
        if missing:
            raise CharLMError(f"this model's vocabulary lacks {missing[0]}, so it cannot write a {form.name}")
        self.choices = self._choices()
        n_lines = form.lines if form is not None else 1
        # set_of[k][i]: the rhyme set of line i in choice k (−1: the line does not rhyme)
        self.set_of = [[next((j for j, members in enumerate(p.rhyme_sets) if i in members), -1) for i in range(n_lines)]
                       for p in self.choices] or [[-1]]
        self.n_sets = max([len(p.rhyme_sets) for p in self.choices] + [1])
        self.rhyme_tones = sorted({t for p in self.choices for t in p.rhyme_tones if t}) or [LEVEL]
        self.rhyme_tone_t = torch.tensor([[self.rhyme_tones.index(p.rhyme_tones[i]) if p.rhyme_tones[i] else 0
                                           for i in range(n_lines)] for p in self.choices] or [[0]], dtype=torch.long)
        self.group_names: list[str] = []
        self.group_mask: dict[str, dict[str, torch.Tensor]] = {}  # rhyme tone → key → (V,) characters
        if spec.rhyme or spec.tones:
            from charlm.poetry import RhymeTable

            self.table = table or RhymeTable.default()
            self.ping, self.ze, self.keys_of, self.group_mask = _vocab_rhymes(
                self.table, tuple(vocab.chars), form.rhyme_scheme, tuple(self.rhyme_tones))
            self.group_names = sorted({g for masks in self.group_mask.values() for g in masks})
            self.rhymable = self._rhymable()
        # novelty: for each training line minus its last character, the last characters that would copy it
        self.banned: dict[str, list[int]] = {}
        self.lines = lines or set()
        if spec.novel:
            if not lines:
                raise CharLMError("this checkpoint does not keep its training lines, so --novel cannot be checked")
            for line in lines:
                if len(line) >= 1 and line[-1] in vocab:
                    self.banned.setdefault(line[:-1], []).append(vocab.encode(line[-1])[0])
        self._tables()

    def _choices(self) -> list:
        """The form's patterns a poem may follow. Where the patterns differ on whether the first
        line rhymes (regulated verse: 首句入韵 or not), --rhyme-first chooses; a form whose first
        line never rhymes refuses it."""
        form, spec = self.form, self.spec
        if form is None:
            return []
        firsts = {0 in p.rhyme_lines for p in form.patterns}
        if spec.rhyme_first and True not in firsts:
            raise CharLMError(f"--rhyme-first: the first line of a {form.name} does not rhyme")
        if len(firsts) == 1:
            return list(form.patterns)
        return [p for p in form.patterns if (0 in p.rhyme_lines) == spec.rhyme_first]

    def _rhymable(self) -> torch.Tensor:
        """(choices, lines, V) bool: the characters that may open line i's rhyme set, those with a
        key that enough characters share to rhyme the set's other lines (on their tones)."""
        n_lines = self.form.lines
        out = torch.zeros(len(self.choices), n_lines, self.V, dtype=torch.bool)
        size = {t: {g: int(gm.sum()) for g, gm in masks.items()} for t, masks in self.group_mask.items()}
        for k, p in enumerate(self.choices):
            for members in p.rhyme_sets:
                need = {t: sum(p.rhyme_tones[i] == t for i in members) for t in self.rhyme_tones}
                big = {g for g in self.group_names if all(size[t].get(g, 0) >= n for t, n in need.items() if n)}
                for i in members:
                    keys = self.keys_of[p.rhyme_tones[i]]
                    out[k, i] = torch.tensor([bool(ks & big) for ks in keys])
        return out

    # -- starting states -----------------------------------------------------------------------
    def start_slots(self) -> list[Slot]:
        """The possible starting states: one per pattern under --tones, else one."""
        spec = self.spec
        if spec.form is None:
            return [Slot()]
        follow = list(enumerate(self.choices)) if spec.tones else [(0, self.choices[0])]
        return [Slot(pattern=p.tones if spec.tones else None, pattern_name=p.name if spec.tones else None,
                     rhyme_lines=frozenset(p.rhyme_lines) if spec.rhyme else frozenset(),
                     groups=(None,) * len(p.rhyme_sets), choice=k)
                for k, p in follow]

    # -- the mask ------------------------------------------------------------------------------
    def mask(self, s: Slot) -> torch.Tensor:
        """Bool (V,): characters allowed next in state ``s`` (one poem; see ``masks`` for a batch)."""
        if s.done:
            m = torch.zeros(self.V, dtype=torch.bool)
            m[EOS_ID] = True
            return m
        return self._free_mask(s) if self.spec.form is None else self._form_mask(s)

    def _free_mask(self, s: Slot) -> torch.Tensor:
        """Acrostic or novelty without a form: lines end at any line-ending mark."""
        spec = self.spec
        m = torch.zeros(self.V, dtype=torch.bool)
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

    def _form_mask(self, s: Slot) -> torch.Tensor:
        """A form: shape, punctuation, acrostic, tones, rhyme and novelty at a line's end."""
        V, spec, form = self.V, self.spec, self.spec.form
        m = torch.zeros(V, dtype=torch.bool)
        if s.line >= form.lines:
            m[EOS_ID] = True
            return m
        length = form.lengths[s.line]
        if s.pos == length:
            m[self.vocab.encode(self.marks[s.line])[0]] = True
            return m
        m[:] = self.han
        if spec.acrostic and s.pos == 0:
            m[:] = False
            m[self.vocab.encode(spec.acrostic[s.line])[0]] = True
        if s.pattern is not None and s.pattern[s.line][s.pos] != EITHER:
            m &= self.ping if s.pattern[s.line][s.pos] == LEVEL else self.ze
        if s.pos == length - 1:
            if s.line in s.rhyme_lines:
                k = self.set_of[s.choice][s.line]
                if s.groups[k] is None:
                    m &= self.rhymable[s.choice, s.line]
                else:
                    tone = self.choices[s.choice].rhyme_tones[s.line]
                    g = torch.zeros(V, dtype=torch.bool)
                    for name in s.groups[k]:
                        if name in self.group_mask[tone]:
                            g |= self.group_mask[tone][name]
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
        length = form.lengths[min(s.line, form.lines - 1)]
        if s.pos == length:  # the punctuation closing a line
            return replace(s, line=s.line + 1, pos=0, text="")
        s2 = replace(s, pos=s.pos + 1, text=s.text + ch)
        if s.pos == length - 1 and s.line in s.rhyme_lines:
            k = self.set_of[s.choice][s.line]
            gs = self.keys_of[self.choices[s.choice].rhyme_tones[s.line]][token]
            groups = list(s.groups)
            groups[k] = gs if groups[k] is None else groups[k] & gs
            s2 = replace(s2, groups=tuple(groups), used_rhymes=s.used_rhymes | {ch})
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
                    why = why or f"{ch!r} (character {i + 1}): {self._rule_broken(s, t)}"
                    break
                s = self.advance(s, t)
            else:
                ok.append(s)
        if not ok:
            raise CharLMError(f"the prompt {prompt!r} cannot start this poem at {why}")
        return ok

    def _rule_broken(self, s: Slot, token: int) -> str:
        """Which rule refuses ``token`` in state ``s``, in words that name the option."""
        spec, form, ch = self.spec, self.spec.form, self.vocab.chars[token]
        if s.done or (form is not None and s.line >= form.lines):
            return "the poem is already complete"
        if spec.acrostic and s.pos == 0 and s.line < len(spec.acrostic) and ch != spec.acrostic[s.line]:
            return f"--acrostic {spec.acrostic} starts line {s.line + 1} with {spec.acrostic[s.line]}"
        if form is None:
            return "a line of the acrostic ends only after a character, and the poem ends with 。"
        length = form.lengths[s.line]
        where = f"a {form.name} line" if form.chars else f"line {s.line + 1} of a {form.name}"
        if s.pos == length:
            return f"{where} has {length} characters, so {self.marks[s.line]} comes here"
        if not self.han[token]:
            return f"{where} holds {length} Chinese characters and no punctuation inside it"
        if s.pattern is not None and s.pattern[s.line][s.pos] != EITHER:
            want = s.pattern[s.line][s.pos]
            if not bool((self.ping if want == LEVEL else self.ze)[token]):
                return f"--tones needs a {want}-tone character at position {s.pos + 1} of line {s.line + 1}"
        if s.pos == length - 1 and s.line in s.rhyme_lines:
            return f"--rhyme needs line {s.line + 1} to end in a rhyme of the poem"
        return "--novel: that would copy a line of the training text"

    def steps_needed(self) -> int | None:
        f = self.spec.form
        return None if f is None else sum(f.lengths) + f.lines + 1


# -- repetition -------------------------------------------------------------------------------

# At most this many uses of one Han character in a poem: 97.3% of the 14,227 real quatrains of
# corpora/tang-quatrains.txt use none more than twice (58.2% none twice, 2.1% one three times).
MAX_REPEAT = 2


class Repeats:
    """No repeated Han bigram within a poem, and at most ``cap`` uses of one Han character, for B
    rows at once. ``hist`` holds each row's characters so far (the prompt included); a bigram never
    spans a line-ending mark, because the mark sits between the two lines' characters in ``hist``."""

    def __init__(self, vocab: Vocab, prompt_ids: list[int], rows: int, steps: int, cap: int = MAX_REPEAT) -> None:
        self.han = torch.tensor([is_han(c) for c in vocab.chars])
        self.han[UNK_ID] = False
        self.cap = cap
        self.hist = torch.full((rows, len(prompt_ids) + steps + 1), EOS_ID, dtype=torch.long)
        self.t = 0
        self.counts = torch.zeros(rows, len(vocab), dtype=torch.int32)
        for t in prompt_ids:
            self.feed(torch.full((rows,), t, dtype=torch.long))

    def feed(self, tokens: torch.Tensor) -> None:
        self.hist[:, self.t] = tokens
        self.t += 1
        self.counts.scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=torch.int32))

    def banned(self) -> torch.Tensor:
        """Bool (B, V): Han characters that would repeat a bigram or pass the cap."""
        out = self.counts >= self.cap
        if self.t >= 2:
            prev = self.hist[:, self.t - 1]
            seen = (self.hist[:, : self.t - 1] == prev[:, None]).float()  # where prev stood before
            after = torch.zeros(out.shape).scatter_add_(1, self.hist[:, 1 : self.t], seen) > 0
            out |= after & self.han[prev][:, None]
        return out & self.han

    def restrict(self, allowed: torch.Tensor) -> torch.Tensor:
        """``allowed`` minus the banned characters, except in a row that would be left with none
        (e.g. a rhyme only a used character can make): there the rule yields."""
        kept = allowed & ~self.banned()
        return torch.where(kept.any(-1, keepdim=True), kept, allowed)

    def take(self, index: torch.Tensor) -> None:
        self.hist, self.counts = self.hist[index], self.counts[index]
