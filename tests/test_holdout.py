"""python -m charlm.holdout: a corpus less another model's validation poems (matched on Han characters)."""

import subprocess
import sys

from charlm import checkpoint
from charlm.data import split_poems
from charlm.holdout import without
from charlm.vocab import normalize


def test_without_matches_on_han_characters_and_keeps_order():
    poems = ["白日依山尽，黄河入海流。", "床前明月光。", "春眠不觉晓，处处闻啼鸟。"]
    assert without(poems, ["白日依山尽黄河入海流", ""]) == poems[1:]
    assert without(poems, ["白日依山尽，黄河入海"]) == poems  # a part is not the poem


def test_the_checkpoints_validation_poems_are_left_out(trained, tmp_path):
    ck = checkpoint.load(trained)
    tc = ck.config.train
    source = ck.corpus["path"]
    _, valid = split_poems(normalize(open(source, encoding="utf-8").read(), ck.vocab.script), tc.valid_fraction,
                           tc.seed)
    assert valid
    novel = "孤帆远影碧空尽，唯见长江天际流。"
    corpus = tmp_path / "other.txt"
    corpus.write_text("\n".join([valid[0].replace("，", "、"), novel, *valid[1:]]) + "\n", encoding="utf-8")
    out = tmp_path / "rest.txt"
    r = subprocess.run([sys.executable, "-m", "charlm.holdout", str(corpus), "--minus", str(trained), "--out", str(out)],
                       capture_output=True, text=True, encoding="utf-8")
    assert r.returncode == 0, r.stderr
    assert out.read_text(encoding="utf-8") == novel + "\n"
    assert f"1 of {len(valid) + 1} poems kept" in r.stderr
    again = subprocess.run([sys.executable, "-m", "charlm.holdout", str(corpus), "--minus", str(trained), "--out",
                            str(out)], capture_output=True, text=True, encoding="utf-8")
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert out.read_text(encoding="utf-8") == novel + "\n"
