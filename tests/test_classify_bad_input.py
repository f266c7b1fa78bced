"""Bad input to the classifier's commands, as a user gives it: one sentence on stderr, exit 1,
nothing on stdout, never a traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from charlm.cli import app

from test_classify import TINY, labelled_lines

runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = "\n".join(labelled_lines(60)) + "\n"
    (d / "good.tsv").write_text(good, encoding="utf-8")
    (d / "notab.tsv").write_text("a\t春花\nb 江山\n", encoding="utf-8")
    (d / "nolabel.tsv").write_text("a\t春花\n\t江山\n", encoding="utf-8")
    (d / "nopoem.tsv").write_text("a\t春花\nb\t  \n", encoding="utf-8")
    (d / "onelabel.tsv").write_text("a\t春花\na\t秋月\na\t夜香\n", encoding="utf-8")
    (d / "unknown.tsv").write_text("a\t春花\nc\t江山\n", encoding="utf-8")
    (d / "longlabel.tsv").write_text("a\t春花\n" + "b" * 65 + "\t江山\n", encoding="utf-8")
    (d / "empty.txt").write_text("\n\n", encoding="utf-8")
    r = runner.invoke(app, ["train", "--task", "classify", str(d / "good.tsv"), "--out", str(d / "clf"),
                            "--max-steps", "4", *TINY])
    assert r.exit_code == 0, r.stderr
    return d


@pytest.mark.parametrize("args, message", [
    (["train", "--task", "classify", "{d}/notab.tsv"], "line 2 of '{d}/notab.tsv' has no tab"),
    (["train", "--task", "classify", "{d}/nolabel.tsv"], "line 2 of '{d}/nolabel.tsv' has an empty label"),
    (["train", "--task", "classify", "{d}/nopoem.tsv"], "line 2 of '{d}/nopoem.tsv' has a label but no poem"),
    (["train", "--task", "classify", "{d}/onelabel.tsv"], "has only one label ('a')"),
    (["train", "--task", "classify", "{d}/longlabel.tsv"], "must be 1 to 64 characters"),
    (["train", "--task", "classify", "{d}/empty.txt"], "is empty"),
    (["train", "--task", "classify", "{d}/missing.tsv"], "does not exist"),
    (["train", "--task", "poem", "{d}/good.tsv"], "--task must be one of lm, classify"),
    (["train", "--task", "classify", "{d}/good.tsv", "--pooling", "max"], "--pooling must be one of last, mean"),
    (["train", "{d}/good.tsv", "--pooling", "mean"], "--pooling needs --task classify"),
    (["train", "{d}/good.tsv", "--init-from", "{d}/clf"], "--init-from needs --task classify"),
    (["train", "--task", "classify", "{d}/good.tsv", "--init-from", "{d}/clf"],
     "is a classifier, not a language model"),
    (["train", "--task", "classify", "{d}/good.tsv", "--init-from", "{d}/nowhere"], "does not exist"),
    (["train", "--task", "classify", "{d}/good.tsv", "--init-from", "{d}/clf", "--cell", "gru"],
     "--cell cannot be given with --init-from"),
    (["train", "{d}/good.tsv", "--out", "{d}/clf", "--resume"], "trains a classifier; resume it with --task classify"),
    (["eval", "--checkpoint", "{d}/clf", "--corpus", "{d}/unknown.tsv"], "has label 'c', which this classifier does not know"),
    (["eval", "--checkpoint", "{d}/clf", "--corpus", "{d}/notab.tsv"], "has no tab"),
    (["classify", "--checkpoint", "{d}/clf"], "give a TEXT to classify or --file FILE"),
    (["classify", "--checkpoint", "{d}/clf", "春", "--file", "{d}/good.tsv"], "not both"),
    (["classify", "--checkpoint", "{d}/clf", "  "], "there is no poem to classify"),
    (["classify", "--checkpoint", "{d}/clf", "--file", "{d}/empty.txt"], "is empty"),
    (["classify", "--checkpoint", "{d}/clf", "--file", "{d}/nowhere.txt"], "does not exist"),
    (["classify", "--checkpoint", "{d}/nowhere", "春"], "does not exist"),
    (["classify", "--checkpoint", "{d}/clf", "春", "--device", "tpu"], "device"),
])
def test_bad_input_is_one_sentence_and_exit_1(files, args, message):
    tiny = TINY if args[0] == "train" and "--init-from" not in args else []  # --init-from takes the model's
    r = runner.invoke(app, [a.format(d=files) for a in args] + tiny)
    assert r.exit_code == 1, (r.exit_code, r.stderr, r.exception)
    assert message.format(d=files) in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert len([l for l in r.stderr.splitlines() if l.startswith("error")]) == 1


def test_an_lm_run_is_not_resumed_as_a_classifier(files, trained, tmp_path):
    import shutil

    shutil.copytree(trained, tmp_path / "lm", symlinks=True)
    r = runner.invoke(app, ["train", "--task", "classify", str(files / "good.tsv"), "--out", str(tmp_path / "lm"),
                            "--resume"])
    assert r.exit_code == 1 and "trains a language model; resume it without --task classify" in r.stderr
