"""A corpus with another model's validation poems taken out, so two models can be compared honestly.

    python -m charlm.holdout corpora/tang.txt --minus checkpoints/tang-quatrains --out corpora/tang-train.txt

The checkpoint's validation split is rebuilt from its own corpus, fraction and seed (as `charlm
eval` does). A poem of the corpus is left out when its Han characters are those of a validation
poem, whatever the punctuation, so a model trained on the output has seen none of them.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from charlm.data import read_corpus
from charlm.errors import CharLMError
from charlm.vocab import is_han


def han_key(poem: str) -> str:
    return "".join(c for c in poem if is_han(c))


def without(poems: list[str], held_out: list[str]) -> list[str]:
    """``poems`` in order, less every poem whose Han characters match a poem of ``held_out``."""
    keys = {han_key(p) for p in held_out} - {""}
    return [p for p in poems if han_key(p) not in keys]


def main(argv: list[str] | None = None) -> None:
    from charlm import checkpoint
    from charlm.evaluate import validation_text

    ap = argparse.ArgumentParser(prog="python -m charlm.holdout", description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path, help="one poem a line")
    ap.add_argument("--minus", required=True, help="the checkpoint whose validation poems are taken out")
    ap.add_argument("--out", type=Path, required=True, help="where the rest is written (must not exist)")
    args = ap.parse_args(argv)
    try:
        if args.out.exists():
            raise CharLMError(f"{args.out} already exists; give another --out")
        valid_text, warnings = validation_text(checkpoint.load(args.minus))
        if warnings:
            raise CharLMError(warnings[0])
        poems = [line for line in read_corpus(args.corpus).split("\n") if line.strip()]
        kept = without(poems, valid_text.split("\n"))
        with io.open(args.out, "x", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(kept) + "\n")
    except (CharLMError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.out}: {len(kept):,} of {len(poems):,} poems kept, {len(poems) - len(kept):,} left out",
          file=sys.stderr)


if __name__ == "__main__":
    main()
