"""How often the 平水韵 table's tones agree with the chinese-poetry package's 平仄 strings.

    python benchmarks/strains_agreement.py /tmp/cp/package

The folder is the unpacked npm package (``npm pack chinese-poetry@2.0.1``): its
``dist/strains/json/poet.tang.*.json`` give one 平仄 string per line of each poem
(``平仄仄平平，…``, ``○`` where it has no reading), matched by ``id`` to the poems in
``dist/quantangshi/poet.tang.*.json`` (traditional characters). Over the Tang quatrains (4 lines
of 5 or 7 Han characters) each character is looked up in ``RhymeTable`` twice: as written
(traditional) and after OpenCC simplification, the spelling the corpora and models use. A
character the table gives both tones is counted as polyphonic, one it lacks as unknown; only the
rest are scored as agreeing or not.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from charlm.poetry import LEVEL, OBLIQUE, RhymeTable, check_poem, split_lines
from charlm.vocab import is_han, to_simplified


def read_quatrains(package: Path) -> list[tuple[str, str]]:
    """(poem text, strains text) for each Tang quatrain whose strains line up with its text."""
    dist = package / "dist"
    strains = {}
    for path in sorted((dist / "strains" / "json").glob("poet.tang.*.json")):
        for item in json.loads(path.read_text(encoding="utf-8")):
            strains[item["id"]] = "".join(item["strains"])
    if not strains:
        raise SystemExit(f"no dist/strains/json/poet.tang.*.json under {package}")
    pairs = []
    for path in sorted((dist / "quantangshi").glob("poet.tang.*.json")):
        for poem in json.loads(path.read_text(encoding="utf-8")):
            text = "".join(poem.get("paragraphs", []))
            lines = split_lines(text)
            if (
                len(lines) == 4
                and len({len(line) for line in lines}) == 1
                and len(lines[0]) in (5, 7)
                and all(is_han(c) for line in lines for c in line)
                and poem["id"] in strains
            ):
                pairs.append((text, strains[poem["id"]]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the unpacked chinese-poetry npm package")
    args = parser.parse_args()

    table = RhymeTable.default()
    pairs = read_quatrains(args.package)
    counts = {"traditional": Counter(), "simplified": Counter()}
    aligned = misaligned = 0
    rhyme_ok = 0
    for text, marks in pairs:
        simple = to_simplified(text)
        if len(marks) != len(text) or len(simple) != len(text):
            misaligned += 1
            continue
        aligned += 1
        rhyme_ok += bool(check_poem(simple, table=table).rhyme_valid)
        for trad, simp, mark in zip(text, simple, marks):
            if not is_han(trad):
                continue
            for spelling, ch in (("traditional", trad), ("simplified", simp)):
                c = counts[spelling]
                c["characters"] += 1
                if mark not in (LEVEL, OBLIQUE):
                    c["no strains reading (○/通)"] += 1
                    continue
                tones = table.tones(ch)
                if not tones:
                    c["unknown to the table"] += 1
                elif len(tones) == 2:
                    c["polyphonic in the table"] += 1
                elif mark in tones:
                    c["agree"] += 1
                else:
                    c["disagree"] += 1

    print(f"Tang quatrains with strains: {len(pairs)} ({aligned} aligned, {misaligned} skipped: lengths differ)")
    print(f"rhyme_valid by check_poem (simplified text): {rhyme_ok}/{aligned} = {rhyme_ok / max(aligned, 1):.1%}")
    print()
    rows = ["characters", "no strains reading (○/通)", "unknown to the table", "polyphonic in the table",
            "agree", "disagree"]
    print(f"{'':28}{'traditional':>22}{'simplified':>22}")
    for row in rows:
        cells = []
        for spelling in ("traditional", "simplified"):
            c = counts[spelling]
            n = c[row]
            cells.append(f"{n:>12} {n / max(c['characters'], 1):>8.2%}")
        print(f"{row:28}{cells[0]:>22}{cells[1]:>22}")
    print()
    for spelling in ("traditional", "simplified"):
        c = counts[spelling]
        scored = c["agree"] + c["disagree"]
        print(f"agreement where both give one tone ({spelling}): {c['agree']}/{scored} = "
              f"{c['agree'] / max(scored, 1):.2%}")


if __name__ == "__main__":
    main()
