"""Build the shipped corpora from the MIT-licensed npm package chinese-poetry 2.0.1.

    npm pack chinese-poetry@2.0.1
    python -m charlm.corpora chinese-poetry-2.0.1.tgz --out corpora/

Reads ``dist/quantangshi/poet.tang.*.json`` (全唐诗) and ``dist/mengxue/tangshisanbaishou.json``
(唐诗三百首), keeps the body of each poem, drops editorial notes, converts to simplified
characters with OpenCC and writes UTF-8 text, one poem per line:

- ``tang.txt``: every Tang poem (identical bodies kept once);
- ``tang-quatrains.txt``: 五言/七言绝句 — 4 lines of 5 or 7 Han characters, punctuated ，。，。;
- ``tangshi300.txt``: 唐诗三百首.

With ``--all`` it also reads ``dist/quantangshi/poet.song.*.json`` (全宋诗) and writes two large
corpora that are not committed (tens of MB; ``.gitignore`` lists them):

- ``song.txt``: every Song poem (identical bodies kept once);
- ``all.txt``: Tang and Song — ``tang.txt``, then the Song poems not already in it.

With ``--ci`` it also reads ``dist/songci/ci.song.*.json`` (the Song ci) and writes ``songci.txt``
(one ci a line, identical texts kept once) and ``cipai.json``, the tune table ``charlm.cipai``
learns from them.

With ``--tang-song`` (which implies ``--all``) it also writes ``tang-song.tsv``, the labelled corpus of
`charlm train --task classify`: one poem a line as ``label<TAB>poem``, labels ``tang`` and ``song``.
A body found in both dynasties is dropped from both (it cannot be told apart), and the Song side is a
sample, fixed by ``--seed``, of as many poems as the Tang side has, so the classes are balanced. Not
committed (about 20 MB; ``.gitignore`` lists it).

    corpora = build(args.source, song=args.all or args.couplets)
"""

from __future__ import annotations

import argparse
import io
import random
import json
import re
import sys
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterator

from charlm import cipai
from charlm.poetry import LINE_ENDS
from charlm.vocab import is_han, to_simplified

# Editorial notes: （一作「…」）, (…), 〖1〗 footnote marks. Removed innermost first.
_NOTE = re.compile(r"[（(][^（()）]*[)）]")
_FOOTNOTE = re.compile(r"〖[^〖〗]*〗")
# Characters the source spells with an ideographic description, e.g. {𥫗/戢}: unrepresentable.
_COMPOSED = re.compile(r"\{[^{}]*\}")
# Editorial restorations, e.g. [爽]: keep the character, drop the brackets.
_RESTORED = re.compile(r"\[([^\[\]]*)\]")
_SPACE = re.compile(r"\s+")


def clean_body(paragraphs: list[str]) -> str:
    """The poem's text as one line, notes removed, in the source's script."""
    text = "".join(paragraphs)
    prev = None
    while prev != text:  # notes can nest
        prev = text
        text = _NOTE.sub("", text)
        text = _FOOTNOTE.sub("", text)
    text = _COMPOSED.sub("□", text)
    text = _RESTORED.sub(r"\1", text)
    text = _SPACE.sub("", text)
    return text


def as_quatrain(body: str) -> str | None:
    """The poem re-punctuated ，。，。 if it is a 五言 or 七言 quatrain, else None."""
    clauses = [c for c in re.split(f"[{LINE_ENDS}]", body) if c]
    if len(clauses) != 4 or len({len(c) for c in clauses}) != 1 or len(clauses[0]) not in (5, 7):
        return None
    if not all(is_han(ch) for c in clauses for ch in c):
        return None
    # the source must itself end clauses where we cut (no stray punctuation inside a line)
    if len(body) != 4 * len(clauses[0]) + 4:
        return None
    return f"{clauses[0]}，{clauses[1]}。{clauses[2]}，{clauses[3]}。"


def as_regulated(body: str) -> list[str] | None:
    """The eight lines of a 五律 or 七律 (8 lines of 5 or 7 Han characters, the source's own
    clause ends), else None."""
    clauses = [c for c in re.split(f"[{LINE_ENDS}]", body) if c]
    if len(clauses) != 8 or len({len(c) for c in clauses}) != 1 or len(clauses[0]) not in (5, 7):
        return None
    if not all(is_han(ch) for c in clauses for ch in c):
        return None
    if len(body) != 8 * len(clauses[0]) + 8:  # no stray punctuation inside a line
        return None
    return clauses


def couplets(poems: list[str]) -> list[list[tuple[str, str]]]:
    """For each regulated poem, its parallel couplets (lines 3–4 and 5–6) not seen before: one
    list per poem, poems with none left out."""
    seen: set[tuple[str, str]] = set()
    out = []
    for body in poems:
        lines = as_regulated(body)
        if lines is None:
            continue
        pairs = [(lines[i], lines[i + 1]) for i in (2, 4) if (lines[i], lines[i + 1]) not in seen]
        seen.update(pairs)
        if pairs:
            out.append(pairs)
    return out


def render_couplets(poems: list[list[tuple[str, str]]]) -> str:
    """couplets.tsv: ``上联<TAB>下联`` lines, a blank line after each poem's pairs."""
    return "".join("".join(f"{a}\t{b}\n" for a, b in pairs) + "\n" for pairs in poems)


def _open_source(source: Path, song: bool = False, ci: bool = False) -> Iterator[tuple[str, bytes]]:
    """(relative path under package/, bytes) for the JSON files we need, from a .tgz or a folder."""
    dynasties = "tang|song" if song else "tang"
    songci = r"|songci/ci\.song\.\w+\.json" if ci else ""
    wanted = re.compile(rf"dist/(quantangshi/poet\.({dynasties})\.\d+\.json|mengxue/tangshisanbaishou\.json{songci})$")
    if source.is_dir():
        root = source / "package" if (source / "package").is_dir() else source
        for p in sorted(root.rglob("*.json")):
            rel = p.relative_to(root).as_posix()
            if wanted.search(rel):
                yield rel, p.read_bytes()
    else:
        with tarfile.open(source) as tar:
            for m in sorted(tar.getmembers(), key=lambda m: m.name):
                rel = m.name.removeprefix("package/")
                if m.isfile() and wanted.search(rel):
                    yield rel, tar.extractfile(m).read()


def _file_order(rel: str) -> int:
    m = re.search(r"poet\.\w+\.(\d+)\.json$", rel)
    return int(m.group(1)) if m else -1


def _new_bodies(files: dict[str, bytes], names: list[str], seen: set[str]):
    """(entry, body) for each poem in ``names`` whose cleaned, simplified body is not yet in ``seen``
    (which grows): the one cleaning and deduplication of poems and ci alike."""
    for rel in names:
        for entry in json.loads(files[rel]):
            body = clean_body(entry.get("paragraphs") or [])
            if not body:
                continue
            body = to_simplified(body)
            if body not in seen:
                seen.add(body)
                yield entry, body


def _bodies(files: dict[str, bytes], names: list[str], seen: set[str]) -> list[str]:
    """The cleaned, simplified bodies of the poems in ``names``, skipping any already in ``seen``."""
    return [body for _, body in _new_bodies(files, names, seen)]


def _ci_order(rel: str) -> tuple[int, str]:
    """ci.song.0.json, ci.song.1000.json, …, ci.song.21000.json, then ci.song.2019y.json."""
    m = re.search(r"ci\.song\.(\d+)\.json$", rel)
    return (int(m.group(1)), rel) if m else (1 << 30, rel)


def build_ci(source: Path, files: dict[str, bytes] | None = None) -> list[tuple[str, str]]:
    """(tune, ci) for every Song ci in ``dist/songci/ci.song.*.json``: the tune is the source's
    ``rhythmic`` field, the ci its ``paragraphs`` cleaned like a poem and simplified; a ci whose
    text repeats an earlier one is kept once (with the earlier one's tune)."""
    files = files if files is not None else dict(_open_source(source, ci=True))
    names = sorted((r for r in files if "songci/ci.song." in r), key=_ci_order)
    if not names:
        raise SystemExit(f"{source} holds no Song ci (dist/songci/ci.song.*.json)")
    return [(to_simplified((entry.get("rhythmic") or "").strip()), body)
            for entry, body in _new_bodies(files, names, set())]


def build(source: Path, song: bool = False) -> dict[str, list[str]]:
    """The three shipped corpora as lists of poems (simplified, one line each); with ``song``, also
    ``song.txt`` and ``all.txt`` (Tang, then the Song poems not already among them)."""
    files = dict(_open_source(source, song))
    tang_files = sorted((r for r in files if "poet.tang." in r), key=_file_order)
    if not tang_files or not any("tangshisanbaishou" in r for r in files):
        raise SystemExit(f"{source} does not look like the chinese-poetry 2.0.1 package")
    seen: set[str] = set()
    tang = _bodies(files, tang_files, seen)
    quatrains: list[str] = []
    seen_q: set[str] = set()
    for body in tang:
        q = as_quatrain(body)
        if q and q not in seen_q:
            seen_q.add(q)
            quatrains.append(q)
    t300 = json.loads(next(files[r] for r in files if "tangshisanbaishou" in r))
    tangshi300 = []
    for section in t300["content"]:
        for poem in section["content"]:
            body = clean_body(poem.get("paragraphs") or [])
            if body:
                tangshi300.append(to_simplified(body))
    corpora = {"tang.txt": tang, "tang-quatrains.txt": quatrains, "tangshi300.txt": tangshi300}
    if song:
        song_files = sorted((r for r in files if "poet.song." in r), key=_file_order)
        if not song_files:
            raise SystemExit(f"{source} holds no Song poems (dist/quantangshi/poet.song.*.json)")
        song_poems = _bodies(files, song_files, set())
        corpora["song.txt"] = song_poems
        corpora["all.txt"] = tang + [body for body in song_poems if body not in seen]
    return corpora


TANG_SONG_SEED = 1234  # which Song poems the balanced sample takes


def tang_song(tang: list[str], song: list[str], seed: int = TANG_SONG_SEED) -> list[str]:
    """``label<TAB>poem`` lines: every Tang poem not also among the Song ones, then as many Song
    poems not among the Tang ones, chosen by ``seed`` and kept in source order (or all of them when
    there are fewer). Each list is already free of repeats (``_bodies``)."""
    both = set(tang) & set(song)
    tang = [p for p in tang if p not in both]
    song = [p for p in song if p not in both]
    n = min(len(tang), len(song))
    chosen = sorted(random.Random(seed).sample(range(len(song)), n))
    return [f"tang\t{p}" for p in tang[:n]] + [f"song\t{song[i]}" for i in chosen]


def stats(poems: list[str]) -> dict[str, int]:
    text = "".join(poems)
    return {
        "poems": len(poems),
        "characters": len(text),
        "han_characters": sum(map(is_han, text)),
        "distinct_characters": len(Counter(text)),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m charlm.corpora", description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path, help="chinese-poetry-2.0.1.tgz from `npm pack`, or its unpacked folder")
    ap.add_argument("--out", type=Path, default=Path("corpora"))
    ap.add_argument("--all", action="store_true",
                    help="also write song.txt (全宋诗) and all.txt (Tang and Song), tens of MB, not committed")
    ap.add_argument("--couplets", action="store_true",
                    help="also write couplets.tsv: the parallel couplets of Tang and Song 五律/七律 (reads the Song poems)")
    ap.add_argument("--ci", action="store_true",
                    help="also write songci.txt (the Song ci) and cipai.json (the tune table learned from them)")
    ap.add_argument("--tang-song", action="store_true",
                    help="also write tang-song.tsv (label<TAB>poem, Tang and Song balanced), ~20 MB, not committed; "
                         "implies --all")
    ap.add_argument("--seed", type=int, default=TANG_SONG_SEED, help="which Song poems --tang-song samples")
    args = ap.parse_args(argv)
    corpora = build(args.source, song=args.all or args.tang_song or args.couplets)
    if args.tang_song:
        corpora["tang-song.tsv"] = tang_song(corpora["tang.txt"], corpora["song.txt"], args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.couplets:
        pairs = couplets(corpora["all.txt"])
        (args.out / "couplets.tsv").write_text(render_couplets(pairs), encoding="utf-8", newline="\n")
        print(f"couplets.tsv: {sum(map(len, pairs))} pairs from {len(pairs)} poems", file=sys.stderr)
        if not args.all:
            for name in ("song.txt", "all.txt"):
                corpora.pop(name)
    if args.ci:
        ci = build_ci(args.source)
        corpora["songci.txt"] = [body for _, body in ci]
        table = cipai.learn(ci)
        cipai.write(table, args.out / "cipai.json")
        print(f"cipai.json: {len(table.tunes)} tunes of at least {table.min_examples} ci, "
              f"covering {table.covered} of the {table.ci} ci with a known tune", file=sys.stderr)
    for name, poems in corpora.items():
        with io.open(args.out / name, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(poems) + "\n")
        s = stats([line.split("\t", 1)[-1] for line in poems] if name.endswith(".tsv") else poems)
        print(f"{name}: {s['poems']} poems, {s['characters']} characters "
              f"({s['han_characters']} Han), {s['distinct_characters']} distinct", file=sys.stderr)


if __name__ == "__main__":
    main()
