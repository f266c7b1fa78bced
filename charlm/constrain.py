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

import torch

from charlm.errors import CharLMError
from charlm.poetry import COMMA, FULL_STOP as PERIOD, LINE_ENDS, end_mark, free_positions, patterns
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
    pattern: tuple[str, ...] | None = None  # per-line '平'/'仄' strings
    pattern_name: str | None = None
    rhyme_lines: frozenset[int] = frozenset()
    groups: frozenset[str] | None = None  # level-tone groups still possible for the rhyme
    used_rhymes: frozenset[str] = frozenset()
    done: bool = False
    novel_ok: bool = True


# -- the batched state ------------------------------------------------------------------------

@dataclass
class Rows:
    """The state of B poems as tensors, so that ``PoemConstraint.masks`` and ``advance_rows`` work
    on all rows at once. The fields mirror ``Slot``: ``pattern`` indexes ``PoemConstraint.patterns``
    (−1: none), ``groups`` are the level-tone groups still open to the rhyme (all True until the
    first rhyme is written, ``rhymed`` False), ``used`` the rhyme characters already written.
    ``texts`` (the current line) is kept only for --novel, whose training lines are strings."""

    line: torch.Tensor  # (B,) long
    pos: torch.Tensor  # (B,) long
    done: torch.Tensor  # (B,) bool
    pattern: torch.Tensor  # (B,) long
    rhyme_lines: torch.Tensor  # (B, lines) bool
    rhymed: torch.Tensor  # (B,) bool
    groups: torch.Tensor  # (B, G) bool
    used: torch.Tensor  # (B, V) bool
    texts: list[str] | None = None

    def take(self, index: torch.Tensor) -> "Rows":
        """The rows at ``index`` (beam search reorders and copies rows)."""
        out = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "texts"}
        texts = None if self.texts is None else [self.texts[i] for i in index.tolist()]
        return Rows(**out, texts=texts)


def _pattern_ping(con: "PoemConstraint") -> torch.Tensor:
    """(P, lines, chars) bool: True where pattern p wants a level (平) tone."""
    if not con.patterns:
        return torch.zeros(1, 1, 1, dtype=torch.bool)
    return torch.tensor([[[t == "平" for t in line] for line in p] for p in con.patterns])


class _Batched:
    """The batched half of PoemConstraint (mixed in): Slots → Rows, masks and advance for B rows."""

    def _tables(self) -> None:
        spec, V = self.spec, self.V
        self.patterns = [p.lines for p in patterns(spec.form)] if spec.form is not None and spec.tones else []
        self.pattern_names = [p.name for p in patterns(spec.form)] if self.patterns else []
        self.pat_ping = _pattern_ping(self)
        self.free_t = torch.zeros(max(1, spec.form.chars if spec.form else 1), dtype=torch.bool)
        for p in self.free:
            self.free_t[p] = True
        names = sorted(getattr(self, "group_mask", {}))
        self.group_names = names
        self.groups_matrix = (torch.stack([self.group_mask[g] for g in names]) if names
                              else torch.zeros(0, V, dtype=torch.bool))  # (G, V)
        self.acrostic_ids = torch.tensor(self.vocab.encode(spec.acrostic) or [0], dtype=torch.long)
        self.is_line_end = torch.zeros(V, dtype=torch.bool)
        self.is_line_end[self.line_end_ids] = True
        self.end_ids = torch.tensor([self.comma, self.period], dtype=torch.long)

    def rows(self, slots: list[Slot]) -> Rows:
        """Slots (e.g. from ``feed_prompt``) as a batched state."""
        n_lines = self.spec.form.lines if self.spec.form is not None else 1
        pattern = [self.pattern_names.index(s.pattern_name) if s.pattern is not None else -1 for s in slots]
        G = len(self.group_names)
        groups = torch.tensor([[s.groups is None or g in s.groups for g in self.group_names] for s in slots],
                              dtype=torch.bool).reshape(len(slots), G)
        used = torch.zeros(len(slots), self.V, dtype=torch.bool)
        for b, s in enumerate(slots):
            used[b, self._ids(s.used_rhymes)] = True
        return Rows(
            line=torch.tensor([s.line for s in slots], dtype=torch.long),
            pos=torch.tensor([s.pos for s in slots], dtype=torch.long),
            done=torch.tensor([s.done for s in slots], dtype=torch.bool),
            pattern=torch.tensor(pattern, dtype=torch.long),
            rhyme_lines=torch.tensor([[i in s.rhyme_lines for i in range(n_lines)] for s in slots],
                                     dtype=torch.bool).reshape(len(slots), n_lines),
            rhymed=torch.tensor([s.groups is not None for s in slots], dtype=torch.bool),
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

    def _form_masks(self, r: Rows) -> torch.Tensor:
        spec, form, B, V = self.spec, self.spec.form, r.line.numel(), self.V
        C = form.chars
        line = r.line.clamp(max=form.lines - 1)
        pos = r.pos.clamp(max=C - 1)
        m = self.han[None].expand(B, V).clone()
        if spec.acrostic:
            first = torch.zeros(B, V, dtype=torch.bool)
            first[torch.arange(B), self.acrostic_ids[line]] = True
            m = torch.where((r.pos == 0)[:, None], first, m)
        if self.patterns:
            want_ping = self.pat_ping[r.pattern.clamp(min=0), line, pos]  # (B,)
            tone = torch.where(want_ping[:, None], self.ping, self.ze)
            toned = (r.pattern >= 0) & ~self.free_t[pos]
            m = torch.where(toned[:, None], m & tone, m)
        at_end = r.pos == C - 1
        rhyming = at_end & r.rhyme_lines.gather(1, line[:, None])[:, 0]
        if rhyming.any():
            if len(self.group_names):
                open_groups = (r.groups.float() @ self.groups_matrix.float()) > 0  # (B, V)
                rhyme_ok = torch.where(r.rhymed[:, None], open_groups, self.rhymable)
            else:
                rhyme_ok = torch.zeros(B, V, dtype=torch.bool)
            m = torch.where(rhyming[:, None], m & rhyme_ok & ~r.used, m)
        if spec.novel:
            hit = at_end & self._novel_hits(r, self.banned)
            for b in torch.nonzero(hit)[:, 0].tolist():
                m[b, self.banned[r.texts[b]]] = False
        mark = torch.zeros(B, V, dtype=torch.bool)
        mark[torch.arange(B), self.end_ids[r.line % 2]] = True
        m = torch.where((r.pos == C)[:, None], mark, m)
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
            closes = live & (r.pos == form.chars)
        step = live & ~is_eos & ~closes
        if form is not None and len(self.group_names):
            line = r.line.clamp(max=form.lines - 1)
            rhymes = step & (r.pos == form.chars - 1) & r.rhyme_lines.gather(1, line[:, None])[:, 0]
            if rhymes.any():
                tok_groups = self.groups_matrix[:, tokens].T  # (B, G)
                new_groups = torch.where(r.rhymed[:, None], r.groups & tok_groups, tok_groups)
                r.groups = torch.where(rhymes[:, None], new_groups, r.groups)
                r.rhymed = r.rhymed | rhymes
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


class PoemConstraint(_Batched):
    """Masks over the vocabulary for a ``PoemSpec``; built once per vocabulary."""

    def __init__(self, vocab: Vocab, spec: PoemSpec, table=None, lines: set[str] | None = None) -> None:
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
            from charlm.poetry import RhymeTable

            self.table = table or RhymeTable.default()
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
            self.free = set(free_positions(spec.form.chars))
        # novelty: for each training line minus its last character, the last characters that would copy it
        self.banned: dict[str, list[int]] = {}
        self.patterns = []
        self.lines = lines or set()
        if spec.novel:
            if not lines:
                raise CharLMError("this checkpoint does not keep its training lines, so --novel cannot be checked")
            for line in lines:
                if len(line) >= 1 and line[-1] in vocab:
                    self.banned.setdefault(line[:-1], []).append(vocab.encode(line[-1])[0])
        self._tables()

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
        slots = []
        for p in patterns(spec.form):
            rhymes = frozenset(p.rhyme_lines)
            if (0 in rhymes) != spec.rhyme_first:
                continue
            slots.append(Slot(pattern=tuple(p.lines), pattern_name=p.name,
                              rhyme_lines=rhymes if spec.rhyme else frozenset()))
        return slots

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
        """A fixed form: shape, punctuation, acrostic, tones, rhyme and novelty at a line's end."""
        V, spec, form = self.V, self.spec, self.spec.form
        m = torch.zeros(V, dtype=torch.bool)
        C = form.chars
        if s.line >= form.lines:
            m[EOS_ID] = True
            return m
        if s.pos == C:
            m[self.vocab.encode(end_mark(s.line))[0]] = True
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
        if s.pos == form.chars:
            return f"a {form.name} line has {form.chars} characters, so {end_mark(s.line)} comes here"
        if not self.han[token]:
            return f"a {form.name} line holds {form.chars} Chinese characters and no punctuation inside it"
        if s.pattern is not None and s.pos not in self.free:
            want = s.pattern[s.line][s.pos]
            if not bool((self.ping if want == "平" else self.ze)[token]):
                return f"--tones needs a {want}-tone character at position {s.pos + 1} of line {s.line + 1}"
        if s.pos == form.chars - 1 and s.line in s.rhyme_lines:
            return f"--rhyme needs line {s.line + 1} to end in a rhyme of the poem"
        return "--novel: that would copy a line of the training text"

    def steps_needed(self) -> int | None:
        f = self.spec.form
        return None if f is None else f.lines * (f.chars + 1) + 1


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
