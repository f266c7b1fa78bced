"""Compose a poem line by line: the model proposes candidates for the next line, the user picks
one or writes their own, and may go back.

A ``Composer`` holds the poem so far and has no terminal (charlm.cli drives it with prompts; tests
drive it directly). Candidates for line i are sampled by charlm.sample with the poem so far as the
prompt and the form's constraints (charlm.constrain); line i is cut out of each sampled poem. They
are ranked by the model's mean log-probability per character of the line and its closing mark
(after a broken rule, lines with fewer problems first), and a line already shown at this position is not shown again (``more`` gives new ones).

A line of the user's own is checked against the form (length, Chinese characters only), the
acrostic, the rhyme and, with tones, the 平仄 pattern; the user may keep it anyway. Such a line
no longer fits the decoder's constraints, so candidates after it are decoded under as many of
the constraints as the poem so far still fits — the fewest dropped first, the form itself last —
and ``relaxed`` names what was let go. Verse rules are charlm.poetry's: tones from its 平水韵
table, rhymes by the form's scheme (平水韵 groups for regulated verse, 词林正韵 parts for a tune,
each line on its own rhyme tone and rhyme set), the patterns and marks charlm.constrain decodes
with, the verdict from ``check_poem``. A form is a regulated one or a tune of the tune table
(charlm.cipai.find_form), whose lines differ in length.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from charlm import poetry
from charlm.cipai import find_form
from charlm.config import COMPOSE_CANDIDATES, MAX_COMPOSE_CANDIDATES
from charlm.constrain import PoemConstraint, PoemSpec
from charlm.errors import CharLMError
from charlm.model import model_device
from charlm.sample import SampleSettings, sample_poems
from charlm.vocab import EOS_ID, escape_char, is_han, is_unprintable

POEM_FORMAT_VERSION = 1
# How a character's tone is shown: 平 ○, 仄 ●, either (a character read both ways) ◐, unknown ?.
MARKS = {frozenset({poetry.LEVEL}): "○", frozenset({poetry.OBLIQUE}): "●",
         frozenset({poetry.LEVEL, poetry.OBLIQUE}): "◐"}
UNKNOWN_MARK = "?"
_TRIES = 3  # sampling rounds per request for candidates, each with more rows than the last
_ROWS_PER_CANDIDATE = 3


def tone_marks(line: str, table: poetry.RhymeTable) -> str:
    """One mark per character: ○ 平, ● 仄, ◐ either, ? not in the 平水韵 table."""
    return "".join(MARKS.get(table.tones(ch), UNKNOWN_MARK) for ch in line)


@dataclass(frozen=True)
class ComposeSpec:
    """What the user asked for: ``form`` is a name ``cipai.find_form`` accepts (a regulated form or
    a tune); ``rhyme_group`` a name ``RhymeTable.find_level_group`` accepts (it implies ``rhyme``;
    regulated forms only, whose rhymes are 平水韵 groups)."""

    form: str
    title: str = ""
    acrostic: str = ""
    rhyme: bool = True
    rhyme_group: str | None = None
    rhyme_first: bool = False
    tones: bool = False


@dataclass(frozen=True)
class Candidate:
    """A proposed (or the user's own) line: ``score`` is the model's mean log-probability per
    character of the line and its closing mark; ``rhymes`` is None on a line that need not rhyme."""

    text: str
    score: float
    marks: str
    rhymes: bool | None
    problems: tuple[str, ...]


class Composer:
    """The poem being written, one line at a time."""

    def __init__(self, ckpt, spec: ComposeSpec, *, seed: int | None = None,
                 table: poetry.RhymeTable | None = None, settings: SampleSettings | None = None) -> None:
        self.model, self.vocab, self.path = ckpt.model, ckpt.vocab, getattr(ckpt, "path", None)
        self.form = find_form(spec.form)
        self.title = spec.title.strip()
        bad = [c for c in self.title if is_unprintable(c)]
        if bad:
            raise CharLMError(f"the title holds the control character {escape_char(bad[0])}; a title is one line of text")
        if spec.rhyme_group and not spec.rhyme:
            raise CharLMError("--rhyme-group needs the rhyme; drop --no-rhyme")
        if spec.rhyme_first and not spec.rhyme:
            raise CharLMError("--rhyme-first needs the rhyme; drop --no-rhyme")
        if spec.rhyme_group and self.form.rhyme_scheme != "平水韵":
            raise CharLMError(f"--rhyme-group names a 平水韵 group, for the regulated forms; a {self.form.name} "
                              f"rhymes by the {self.form.rhyme_scheme}")
        table = table or poetry.RhymeTable.default()
        self.table = table.rhyming_only(spec.rhyme_group) if spec.rhyme_group else table
        self.rhyme_group = self.table.group if spec.rhyme_group else None
        self.acrostic = self.vocab.normalize(spec.acrostic).strip()
        self.spec = PoemSpec(form=self.form, acrostic=self.acrostic, rhyme=spec.rhyme,
                             rhyme_first=spec.rhyme_first, tones=spec.tones)
        con = PoemConstraint(self.vocab, self.spec, self.table)  # refuses a bad acrostic or vocabulary now
        self.patterns = con.choices  # the patterns charlm.constrain decodes with (rhyme lines, sets and tones)
        self.marks = con.marks  # the form's line-ending marks as this model writes them
        self.rhyme_lines = frozenset(self.patterns[0].rhyme_lines) if spec.rhyme else frozenset()
        self.seed = seed
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else torch.seed())
        self.settings = replace(settings or SampleSettings(), max_chars=2 * (max(self.form.lengths) + 1))
        self._lines: list[str] = []
        self._kept_problems: list[tuple[str, ...]] = []
        self._shown: set[str] = set()
        self.relaxed: tuple[str, ...] = ()  # the constraints the latest candidates were decoded without

    # -- the poem so far -------------------------------------------------------------------------
    @property
    def lines(self) -> tuple[str, ...]:
        return tuple(self._lines)

    @property
    def line_index(self) -> int:
        """0-based index of the line being written."""
        return len(self._lines)

    @property
    def done(self) -> bool:
        return len(self._lines) >= self.form.lines

    @property
    def poem(self) -> str:
        return "".join(line + self.marks[i] for i, line in enumerate(self._lines))

    def rules(self) -> list[str]:
        """What the current line must be, in short phrases: its length, the acrostic's character,
        the rhyme it must share."""
        i = self.line_index
        rules = [f"{self.form.lengths[i]} characters"]
        if self.acrostic:
            rules.append(f"starting with {self.acrostic[i]}")
        if i in self.rhyme_lines:
            _, ends = self._rhyme_needed()
            anywhere = f"a {self._rhyme_tone(i)} part of the 词林正韵" if self._scheme != "平水韵" else "a 平 group"
            rules.append("rhyming with " + "、".join(ends) if ends else f"rhyming in {self.rhyme_group or anywhere}")
        return rules

    def checks(self) -> poetry.PoemCheck:
        return poetry.check_poem(self.poem, self.form, self.table)

    # -- candidates -------------------------------------------------------------------------------
    def candidates(self, k: int = COMPOSE_CANDIDATES) -> list[Candidate]:
        """Up to ``k`` lines for the current position not shown there before, fewest problems (see
        ``relaxed``) then best score first; fewer (even none) when the model keeps writing the same
        ones."""
        if not 1 <= k <= MAX_COMPOSE_CANDIDATES:
            raise CharLMError(f"ask for 1 to {MAX_COMPOSE_CANDIDATES} candidates, not {k}")
        if self.done:
            raise CharLMError("the poem is complete; go back a line to change it")
        prompt = self.poem
        found: dict[str, None] = {}
        for attempt in range(1, _TRIES + 1):
            for result in self._decode(prompt, k * _ROWS_PER_CANDIDATE * attempt):
                line = self._cut(result.text[len(prompt):])
                if line and line not in self._shown:
                    found.setdefault(line)
            if len(found) >= k:
                break
        ranked = sorted((self._candidate(line, score) for line, score in zip(found, self.score(list(found)))),
                        key=lambda c: (len(c.problems), -c.score))[:k]
        self._shown.update(c.text for c in ranked)
        return ranked

    def _decode(self, prompt: str, rows: int):
        """Sampled poems continuing ``prompt`` under the fullest constraints it still fits."""
        first_error = None
        for dropped, spec in self._specs():
            try:
                results = sample_poems(self.model, self.vocab, prompt, rows, spec=spec, settings=self.settings,
                                       table=self.table, generator=self.generator)
            except CharLMError as e:
                first_error = first_error or e
                continue
            self.relaxed = dropped
            return results
        raise first_error

    def _specs(self):
        """(names dropped, spec): the full spec; once a kept line broke a rule, then every lighter
        one, fewest dropped first, and last no constraint at all."""
        yield (), self.spec
        if not any(self._kept_problems):
            return
        active = [name for name, on in (("the tonal pattern", self.spec.tones), ("the rhyme", self.spec.rhyme),
                                        ("the acrostic", bool(self.acrostic))) if on]
        for size in range(1, len(active) + 1):
            for dropped in itertools.combinations(active, size):
                yield dropped, replace(
                    self.spec,
                    tones=self.spec.tones and "the tonal pattern" not in dropped,
                    rhyme=self.spec.rhyme and "the rhyme" not in dropped,
                    rhyme_first=self.spec.rhyme_first and "the rhyme" not in dropped,
                    acrostic="" if "the acrostic" in dropped else self.acrostic)
        yield (*active, "the form"), PoemSpec()

    @staticmethod
    def _cut(continuation: str) -> str:
        """The first line of a continuation: up to its first line-ending mark or end of poem."""
        return re.split(f"[{re.escape(poetry.LINE_MARKS)}\n]", continuation, maxsplit=1)[0].strip()

    def _candidate(self, line: str, score: float) -> Candidate:
        return Candidate(line, score, tone_marks(line, self.table), self.rhymes(line), tuple(self.check(line)))

    @torch.no_grad()
    def score(self, lines: list[str]) -> list[float]:
        """Mean log-probability per character (nats) of each line and its closing mark as the
        current line, given the poem so far; the model reads the poem once for all of them."""
        if not lines:
            return []
        was_training = self.model.training
        self.model.eval()
        try:
            device = model_device(self.model)
            prefix = torch.tensor([[EOS_ID, *self.vocab.encode(self.poem)]], device=device)
            logits, state = self.model(prefix)
            first = torch.log_softmax(logits[0, -1].float().cpu(), -1)  # (V,)
            mark = self.marks[self.line_index]
            scores = []
            for line in lines:
                ids = torch.tensor([self.vocab.encode(line + mark)])  # (1, T)
                out, _ = self.model(ids[:, :-1].to(device), state) if ids.size(1) > 1 else (None, None)
                logp = float(first[ids[0, 0]])
                if out is not None:
                    rest = torch.log_softmax(out[0].float().cpu(), -1)  # (T-1, V)
                    logp += float(rest.gather(1, ids[0, 1:, None]).sum())
                scores.append(logp / ids.size(1))
            return scores
        finally:
            self.model.train(was_training)

    # -- the user's own lines --------------------------------------------------------------------
    def clean(self, text: str) -> str:
        """A typed line as the poem would hold it: normalised like the model's text, without the
        closing mark; refuses text that is not one line."""
        line = self.vocab.normalize(text).strip()
        if line and line[-1] in poetry.LINE_MARKS:
            line = line[:-1].strip()
        if not line:
            raise CharLMError("the line is empty")
        bad = [c for c in line if is_unprintable(c)]
        if bad:
            raise CharLMError(f"the line holds the control character {escape_char(bad[0])}")
        inner = [c for c in line if c in poetry.LINE_MARKS]
        if inner:
            raise CharLMError(f"the line holds {inner[0]} inside it; give one line at a time")
        return line

    def check(self, text: str) -> list[str]:
        """What is wrong with ``text`` as the current line: form, acrostic, rhyme, 平仄 (with
        tones), characters the model does not know; empty when nothing is."""
        if self.done:
            raise CharLMError("the poem is complete; go back a line to change it")
        line, i, form = self.clean(text), self.line_index, self.form
        problems = []
        want = form.lengths[i]
        if len(line) != want:
            where = f"a {form.name} line" if form.chars else f"line {i + 1} of a {form.name}"
            problems.append(f"it has {len(line)} character{'s' if len(line) != 1 else ''} where {where} has {want}")
        foreign = [c for c in line if not is_han(c)]
        if foreign:
            problems.append(f"it holds characters that are not Chinese: {' '.join(dict.fromkeys(foreign))}")
        if self.acrostic and not line.startswith(self.acrostic[i]):
            problems.append(f"it does not start with {self.acrostic[i]}, the acrostic's character for line {i + 1}")
        if self.rhymes(line) is False:
            problems.append(self._rhyme_problem(line))
        problems += self._tone_problems(line)
        unknown = self.vocab.unknown(line)
        if unknown:
            problems.append(f"this model does not know {' '.join(unknown)}, so it reads it as unknown")
        return problems

    @property
    def _scheme(self) -> str:
        return self.form.rhyme_scheme

    def _rhyme_tone(self, j: int) -> str:
        """The tone line ``j`` rhymes on: 平 in regulated verse; in a tune, the one the tune rhymes on there."""
        return self.patterns[0].rhyme_tones[j] or poetry.LEVEL

    def _keys(self, ch: str, j: int) -> frozenset[str]:
        """What ``ch`` rhymes as at the end of line ``j``: 平水韵 groups or 词林正韵 parts."""
        return poetry.rhyme_keys(ch, self._rhyme_tone(j), self.table, self._scheme)

    def _rhyme_needed(self) -> tuple[frozenset[str] | None, list[str]]:
        """The rhyme keys the current line's last character must share (None: any), and the
        earlier rhyme characters of its rhyme set (a tune may change rhyme: 菩萨蛮 has four sets)."""
        i = self.line_index
        members = next((m for m in self.patterns[0].rhyme_sets if i in m), ())
        keys, ends = None, []
        for j, line in enumerate(self._lines):
            if j in members and j in self.rhyme_lines and line:
                ends.append(line[-1])
                have = self._keys(line[-1], j)
                keys = have if keys is None else keys & have
        return keys, ends

    def rhymes(self, line: str) -> bool | None:
        """Whether ``line`` rhymes as the current line; None where it need not rhyme."""
        if self.line_index not in self.rhyme_lines or not line:
            return None
        keys, _ = self._rhyme_needed()
        have = self._keys(line[-1], self.line_index)
        return bool(have if keys is None else have & keys)

    def _rhyme_problem(self, line: str) -> str:
        _, ends = self._rhyme_needed()
        if ends:
            return f"it ends in {line[-1]}, which does not rhyme with {'、'.join(ends)}"
        if self.rhyme_group:
            return f"it ends in {line[-1]}, which is not in the rhyme group {self.rhyme_group}"
        tone = {poetry.LEVEL: "level-tone (平)", poetry.OBLIQUE: "oblique-tone (仄)"}[self._rhyme_tone(self.line_index)]
        return f"it ends in {line[-1]}, which has no {tone} rhyme in the {self._scheme}"

    def _fits(self, pattern: poetry.Pattern, j: int, line: str) -> list[tuple[int, str, str]]:
        """(position, character, wanted tone) where ``line`` as line ``j`` breaks ``pattern``."""
        misses = []
        for pos, ch in enumerate(line):
            want = pattern.required_tone(j, pos)
            if want is not None and want not in self.table.tones(ch):
                misses.append((pos, ch, want))
        return misses

    def _tone_problems(self, line: str) -> list[str]:
        i, lengths = self.line_index, self.form.lengths
        if not self.spec.tones or len(line) != lengths[i]:
            return []
        earlier = [(j, l) for j, l in enumerate(self._lines) if len(l) == lengths[j]]
        fitting = [p for p in self.patterns if not any(self._fits(p, j, l) for j, l in earlier)] or self.patterns
        misses, pattern = min(((self._fits(p, i, line), p) for p in fitting), key=lambda mp: len(mp[0]))
        if not misses:
            return []
        where = "; ".join(f"{ch} (character {pos + 1}) is not {want}" if self.table.tones(ch)
                          else f"the tone of {ch} (character {pos + 1}) is unknown" for pos, ch, want in misses)
        return [f"its 平仄 {tone_marks(line, self.table)} breaks the pattern {pattern.lines[i]}: {where}"]

    # -- moving ------------------------------------------------------------------------------------
    def accept(self, text: str) -> str:
        """Keep ``text`` (a candidate or the user's own line, problems or not) as the current line;
        returns the line as kept."""
        problems = tuple(self.check(text))
        line = self.clean(text)
        self._lines.append(line)
        self._kept_problems.append(problems)
        self._shown = set()
        return line

    def back(self) -> str:
        """Remove the last line (returned); its position gets fresh candidates."""
        if not self._lines:
            raise CharLMError("there is no line to go back to")
        self._kept_problems.pop()
        self._shown = set()
        return self._lines.pop()

    # -- the result -------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        c = self.checks()
        return {
            "format": "charlm-poem", "format_version": POEM_FORMAT_VERSION,
            "title": self.title, "form": self.form.name, "poem": self.poem, "lines": list(self._lines),
            "acrostic": self.acrostic or None, "rhyme_group": self.rhyme_group,
            "checks": {"form_valid": c.form_valid, "problems": list(c.problems), "rhyme_valid": c.rhyme_valid,
                       "rhyme_group": c.rhyme_group, "rhyme_chars": list(c.rhyme_chars), "pattern": c.pattern,
                       "tone_agreement": c.tone_agreement, "tone_valid": c.tone_valid,
                       "acrostic_valid": (all(l.startswith(a) for l, a in zip(self._lines, self.acrostic))
                                          if self.acrostic else None)},
            "checkpoint": str(self.path) if self.path is not None else None, "seed": self.seed,
        }

    def to_text(self) -> str:
        """The title (when there is one) on its own line, then the poem on one line."""
        return (f"{self.title}\n" if self.title else "") + self.poem + "\n"

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n"


# -- saving --------------------------------------------------------------------------------------

def check_save_target(path: Path, overwrite: bool) -> None:
    """Refuse, before any work, a file the poem could not be saved to or must not replace."""
    if path.is_dir():
        raise CharLMError(f"{path} is a directory; give a file name to save the poem to")
    if path.exists() and not overwrite:
        raise CharLMError(f"{path} already exists; give --overwrite to replace it")
    if not path.parent.is_dir():
        raise CharLMError(f"the folder {path.parent} does not exist, so the poem cannot be saved there")


def save(path: Path, content: str, overwrite: bool) -> None:
    """Write ``content`` to ``path``: a new file, or with ``overwrite`` a whole replacement (written
    beside it and renamed over it, so a reader never sees half a file)."""
    try:
        if not overwrite:
            with open(path, "x", encoding="utf-8") as f:
                f.write(content)
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(content, encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except FileExistsError:
        raise CharLMError(f"{path} already exists; give --overwrite to replace it") from None
    except OSError as e:
        raise CharLMError(f"the poem cannot be saved to {path} ({e.strerror or e})") from None
