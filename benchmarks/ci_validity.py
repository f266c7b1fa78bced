"""How strict the learned tune rules are: the corpus's own ci of the ten most common tunes, judged.

    python benchmarks/ci_validity.py chinese-poetry-2.0.1.tgz

``corpora/songci.txt`` holds one ci a line without its tune; the tune is the source's
``rhythmic`` field. So the ci are paired with their tunes the way ``cipai.json`` was learned:
``charlm.corpora.build_ci`` reads the same tarball (``npm pack chinese-poetry@2.0.1``) and gives
(tune, ci) in songci.txt's order, which is checked line by line before anything is judged.

For each of the ten tunes with the most ci in the table, every ci under that tune name is judged
with ``charlm.poetry.check_poem`` against the tune's form (``charlm.cipai.find_form``), and the
share passing each check is printed: shape (line lengths and marks, ？！； read as 。, ：、 as ，),
rhyme (each rhyme set's ends share a 词林正韵 part on the tune's tone), tones (every 平/仄 position
agrees and no character is missing from the 平水韵 table), all three, and the mean tonal agreement.
Beside each, the baseline measured in the same run: the same ci with their Han characters shuffled
within the ci (seeded; the marks stay), which keeps the shape and the characters but not where they
stand, so it shows how much of a pass the rules owe to the text rather than to chance.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from charlm import cipai  # noqa: E402
from charlm.corpora import build_ci  # noqa: E402
from charlm.poetry import RhymeTable, check_poem  # noqa: E402
from charlm.vocab import is_han  # noqa: E402


def shuffled(text: str, rng: random.Random) -> str:
    """``text`` with its Han characters in a random order and everything else in place."""
    han = [c for c in text if is_han(c)]
    rng.shuffle(han)
    it = iter(han)
    return "".join(next(it) if is_han(c) else c for c in text)


COLUMNS = ("shape", "rhyme", "tones", "tones_known", "all", "agreement")
HEADS = ("shape", "rhyme", "tones", "tones, known", "all three", "agreement")


def rates(texts: list[str], form, table: RhymeTable) -> dict[str, float]:
    """The share of ``texts`` of the tune's shape; among those, the shares passing rhyme, tones, tones
    counting only the characters the table knows (agreement 1.0), and all three; and the mean
    tonal agreement of all ``texts``."""
    checks = [check_poem(t, form, table) for t in texts]
    shaped = [c for c in checks if c.form_valid]
    n, m = max(1, len(checks)), max(1, len(shaped))
    agreements = [c.tone_agreement for c in checks if c.tone_agreement is not None]
    return {
        "shape": len(shaped) / n,
        "rhyme": sum(bool(c.rhyme_valid) for c in shaped) / m,
        "tones": sum(bool(c.tone_valid) for c in shaped) / m,
        "tones_known": sum(c.tone_agreement == 1.0 for c in shaped) / m,
        "all": sum(c.valid for c in shaped) / m,
        "agreement": sum(agreements) / max(1, len(agreements)),
        "shaped": len(shaped),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", type=Path, help="chinese-poetry-2.0.1.tgz (npm pack chinese-poetry@2.0.1)")
    ap.add_argument("--corpus", type=Path, default=ROOT / "corpora" / "songci.txt")
    ap.add_argument("--tunes", type=int, default=10, help="how many of the most common tunes")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffled baseline")
    args = ap.parse_args()

    pairs = build_ci(args.source)
    lines = args.corpus.read_text(encoding="utf-8").split("\n")[:-1]
    if [text for _, text in pairs] != lines:
        raise SystemExit(f"{args.corpus} is not the ci of {args.source} in order; rebuild it with python -m charlm.corpora --ci")
    table = RhymeTable.default()
    tunes = cipai.default_table().tunes
    rng = random.Random(args.seed)
    print(f"{len(lines):,} ci in {args.corpus.name}, paired with their tunes from {args.source.name}")
    print(f"{'tune':<10} {'ci':>5}  " + " ".join(f"{h:>13}" for h in HEADS))
    print(f"{'':<10} {'':>5}  " + " ".join(f"{'corpus/shuf.':>13}" for _ in HEADS))
    n = shaped = 0
    sums: dict[str, float] = {}
    for name in list(tunes)[: args.tunes]:
        texts = [text for tune, text in pairs if tune == name]
        form = cipai.find_form(name)
        real, base = rates(texts, form, table), rates([shuffled(t, rng) for t in texts], form, table)
        print(f"{name:<{10 - len(name)}} {len(texts):>5}  " + " ".join(f"{real[k]:>6.1%}/{base[k]:<6.1%}" for k in COLUMNS))
        n, shaped = n + len(texts), shaped + real["shaped"]
        for k in COLUMNS:  # shape and agreement are over all the ci, the rest over those of the shape
            weight = len(texts) if k in ("shape", "agreement") else real["shaped"]
            sums[k] = sums.get(k, 0) + real[k] * weight
            sums["base_" + k] = sums.get("base_" + k, 0) + base[k] * (len(texts) if k in ("shape", "agreement") else base["shaped"])
    total = {k: sums[k] / (n if k in ("shape", "agreement") else shaped) for k in COLUMNS}
    base_total = {k: sums["base_" + k] / (n if k in ("shape", "agreement") else shaped) for k in COLUMNS}
    print(f"{'all ten':<10} {n:>5}  " + " ".join(f"{total[k]:>6.1%}/{base_total[k]:<6.1%}" for k in COLUMNS))
    print("shape and agreement: of all the ci; rhyme, tones and all three: of the ci with the tune's shape; "
          "tones, known: every 平/仄 position agrees, characters missing from the 平水韵 table aside")


if __name__ == "__main__":
    main()
