"""Sequence to class (`charlm train --task classify`, `charlm classify`, `charlm eval` on a
classifier): learning a separable synthetic task, resume, the figures against hand-computed values,
the CLI as a user runs it, and the default checkpoints of generate and classify."""

from __future__ import annotations

import json
import math
import os
import random

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.classify import NaiveBayes, fit, prepare, read_labelled, report, train_labelled
from charlm.cli import app
from charlm.config import Config, ModelConfig, TrainConfig
from charlm.corpora import tang_song

from conftest import InterruptAt

runner = CliRunner()
A, B = "春花秋月夜香红", "江山风雨雪寒白"  # the two labels' characters: a tiny model can tell them apart
TINY = ["--embed", "16", "--hidden", "24", "--layers", "1", "--seq-len", "24", "--batch-size", "8",
        "--precision", "fp32", "--valid-fraction", "0.2", "--dropout", "0", "--lr", "0.02", "--warmup", "0"]


def labelled_lines(n: int = 120, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    lines = []
    for i in range(n):
        label, chars = ("a", A) if i % 2 else ("b", B)
        lines.append(f"{label}\t" + "".join(r.choice(chars) for _ in range(r.randint(4, 14))))
    return lines


def tiny(**train) -> Config:
    settings = dict(seq_len=24, batch_size=8, max_steps=40, eval_interval=20, warmup_steps=0, valid_fraction=0.2,
                    precision="fp32", lr=0.02, seed=3)
    settings.update(train)
    return Config(ModelConfig(embed_dim=16, hidden_size=24, num_layers=1, dropout=0.0, tie_weights=False),
                  TrainConfig(**settings))


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A labelled file and one classifier trained on it through the CLI, made once."""
    d = tmp_path_factory.mktemp("classify")
    (d / "ab.tsv").write_text("\n".join(labelled_lines()) + "\n", encoding="utf-8")
    r = run("train", "--task", "classify", d / "ab.tsv", "--out", d / "clf", "--max-steps", 60,
            "--eval-interval", 30, *TINY)
    assert r.exit_code == 0, r.stderr
    return d


def test_a_separable_task_is_learned_well_above_chance(world):
    lines = (world / "clf" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    full = [json.loads(l) for l in lines if "full_valid_accuracy" in l][-1]
    assert full["full_valid_poems"] == 24 and full["full_valid_accuracy"] >= 0.9  # chance is 0.5
    train_losses = [json.loads(l)["loss"] for l in lines if '"loss"' in l]
    assert train_losses[-1] < 0.3 * train_losses[0]
    assert train_losses[0] == pytest.approx(math.log(2), abs=0.1)  # no better than a coin at step 1


def test_resume_repeats_the_uninterrupted_run(tmp_path):
    (tmp_path / "ab.tsv").write_text("\n".join(labelled_lines()) + "\n", encoding="utf-8")
    straight = train_labelled(tmp_path / "ab.tsv", tiny(max_steps=30, eval_interval=10), tmp_path / "a")
    part = train_labelled(tmp_path / "ab.tsv", tiny(max_steps=30, eval_interval=10), tmp_path / "b",
                          callbacks=InterruptAt(17))
    assert part.interrupted == "SIGTERM" and part.steps == 17
    resumed = train_labelled(tmp_path / "ab.tsv", tiny(max_steps=30, eval_interval=10), tmp_path / "b", resume=True)
    assert resumed.steps == 30 and straight.steps == 30
    wa = load_file(str(tmp_path / "a" / "resume" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "resume" / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.best_valid_loss == straight.best_valid_loss
    # the log holds each step once
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in l]
    assert steps == sorted(set(steps))


def test_report_against_hand_computed_figures():
    r = report(["a", "b", "c"], [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0])
    assert r.confusion == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]  # rows: true, columns: predicted
    assert r.accuracy == pytest.approx(4 / 6) and r.poems == 6
    assert r.precision == pytest.approx({"a": 1 / 2, "b": 1 / 2, "c": 2 / 2})
    assert r.recall == pytest.approx({"a": 1 / 2, "b": 1 / 1, "c": 2 / 3})
    never = report(["a", "b"], [0, 0], [0, 0])
    assert never.precision["b"] is None and never.recall["b"] is None


def test_naive_bayes_against_hand_computed_scores():
    # characters C = {x, y}; a: x 3, y 1 (4 in all); b: y 2; priors 2/3, 1/3; add-one smoothing
    nb = NaiveBayes(["xxy", "x", "yy"], [0, 0, 1], 2)
    assert nb.log_scores("xy") == pytest.approx([math.log(2 / 3 * 4 / 6 * 2 / 6), math.log(1 / 3 * 1 / 4 * 3 / 4)])
    assert nb.log_scores("yy") == pytest.approx([math.log(2 / 3 * (2 / 6) ** 2), math.log(1 / 3 * (3 / 4) ** 2)])
    assert nb.log_scores("z") == pytest.approx([math.log(2 / 3), math.log(1 / 3)])  # unseen: ignored
    assert nb.predict(["xy", "yy", "z"]) == [0, 1, 0]


def test_eval_on_a_labelled_file_gives_the_confusion_matrix_and_the_baseline(world, tmp_path):
    test = tmp_path / "test.tsv"
    # two mixed poems: naive Bayes, counting characters, must call both b (two b characters against
    # one a character, each seen hundreds of times under its own label and never under the other)
    test.write_text("a\t春花秋\nb\t江山雨\na\t春山山\nb\t风风月\n", encoding="utf-8")
    r = run("eval", "--checkpoint", world / "clf", "--corpus", test, "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == str(world / "clf") and data["corpus"] == str(test)
    assert data["baseline"]["labels"] == ["a", "b"] and data["baseline"]["confusion"] == [[1, 1], [0, 2]]
    assert data["baseline"]["accuracy"] == 0.75 and data["baseline"]["recall"] == {"a": 0.5, "b": 1.0}
    # the model's matrix is the one its own predictions (charlm classify) make
    (tmp_path / "poems.txt").write_text("春花秋\n江山雨\n春山山\n风风月\n", encoding="utf-8")
    r = run("classify", "--checkpoint", world / "clf", "--file", tmp_path / "poems.txt", "--json")
    predicted = [x["label"] for x in json.loads(r.stdout)["results"]]
    true = ["a", "b", "a", "b"]
    expected = [[sum(t == i and p == j for t, p in zip(true, predicted)) for j in "ab"] for i in "ab"]
    assert data["model"]["confusion"] == expected and data["model"]["poems"] == 4

    r = run("eval", "--checkpoint", world / "clf")  # the validation split, as a table
    assert r.exit_code == 0, r.stderr
    assert "naive Bayes" in r.stdout and "precision" in r.stdout and "accuracy" in r.stdout


def test_classify_prints_label_and_probabilities(world, tmp_path):
    r = run("classify", "--checkpoint", world / "clf", "春花秋月")
    assert r.exit_code == 0, r.stderr
    label, probs = r.stdout.rstrip("\n").split("\t")
    assert label == "a"
    p = dict(kv.split("=") for kv in probs.split())
    assert set(p) == {"a", "b"} and sum(map(float, p.values())) == pytest.approx(1, abs=2e-3)
    assert float(p["a"]) > 0.5

    (tmp_path / "poems.txt").write_text("江山风雨\n\n春花秋月\n", encoding="utf-8")
    r = run("classify", "--checkpoint", world / "clf", "--file", tmp_path / "poems.txt", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["checkpoint"] == str(world / "clf")
    assert [x["text"] for x in data["results"]] == ["江山风雨", "春花秋月"]  # blank lines skipped
    assert [x["label"] for x in data["results"]] == ["b", "a"]
    for x in data["results"]:
        assert set(x["probs"]) == {"a", "b"} and sum(x["probs"].values()) == pytest.approx(1)
        assert x["label"] == max(x["probs"], key=x["probs"].get)

    r = run("classify", "--checkpoint", world / "clf", "春龘")
    assert r.exit_code == 0 and "龘" in r.stderr and "warning" in r.stderr


def test_the_tasks_refuse_each_others_checkpoints(world, trained):
    r = run("generate", "--checkpoint", world / "clf", "--max-chars", 5)
    assert r.exit_code == 1 and "is a classifier, not a language model" in r.stderr and r.stdout == ""
    r = run("classify", "--checkpoint", trained, "春")
    assert r.exit_code == 1 and "is a language model, not a classifier" in r.stderr and r.stdout == ""
    r = run("eval", "--checkpoint", world / "clf", "--generate", 2)
    assert r.exit_code == 1 and "is a classifier" in r.stderr


def test_defaults_generate_takes_the_language_model_classify_the_classifier(world, trained, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained, tmp_path / "checkpoints" / "lm", symlinks=True)
    shutil.copytree(world / "clf", tmp_path / "checkpoints" / "clf", symlinks=True)
    os.utime(checkpoint.config_path(tmp_path / "checkpoints" / "clf"))  # the classifier is the newest
    r = run("generate", "--max-chars", 5, "--seed", 1)
    assert r.exit_code == 0, r.stderr
    assert "checkpoints/lm (newest under ./checkpoints/)" in r.stderr
    r = run("classify", "春花")
    assert r.exit_code == 0, r.stderr
    assert "checkpoints/clf (newest under ./checkpoints/)" in r.stderr


def test_init_from_a_language_model_starts_from_its_weights_and_vocabulary(trained, tmp_path):
    (tmp_path / "ab.tsv").write_text("\n".join(labelled_lines()) + "\n", encoding="utf-8")
    lm = checkpoint.load(trained, lines=False)
    prep = prepare(tmp_path / "ab.tsv", tiny(), init_from=trained)
    assert prep.vocab.chars == lm.vocab.chars and prep.config.model == lm.config.model
    start = dict(prep.init)
    # the run starts from the language model: with a learning rate too small to move them, the
    # encoder's weights stay the language model's
    prep = prepare(tmp_path / "ab.tsv", tiny(lr=1e-12, max_steps=2), init_from=trained)
    fit(prep, tmp_path / "d")
    got = checkpoint.load_classifier(tmp_path / "d").model.encoder.state_dict()
    for k, v in start.items():
        torch.testing.assert_close(got[k], v, atol=1e-6, rtol=0)
    assert json.loads(checkpoint.config_path(tmp_path / "d").read_text())["corpus"]["init_from"] == str(trained)


def test_read_labelled_keeps_labels_and_poems(tmp_path):
    p = tmp_path / "x.tsv"
    p.write_text(" tang \t 床前明月光 \n\nsong\t春风又绿\tx\n", encoding="utf-8")
    data = read_labelled(p)
    assert data.labels == ["tang", "song"] and data.texts == ["床前明月光", "春风又绿\tx"]


def test_tang_song_drops_shared_poems_and_balances_the_classes():
    tang = ["t1", "t2", "both", "t3"]
    song = ["s1", "both", "s2", "s3", "s4", "s5"]
    lines = tang_song(tang, song, seed=5)
    labels = [l.split("\t")[0] for l in lines]
    poems = [l.split("\t")[1] for l in lines]
    assert labels == ["tang"] * 3 + ["song"] * 3 and "both" not in poems
    assert poems[:3] == ["t1", "t2", "t3"] and set(poems[3:]) <= {"s1", "s2", "s3", "s4", "s5"}
    assert poems[3:] == [p for p in song if p in poems[3:]]  # in source order
    assert tang_song(tang, song, seed=5) == lines and tang_song(tang, song, seed=6) != lines


SHIPPED = checkpoint.shipped_checkpoint("classify")


@pytest.mark.skipif(not checkpoint.is_checkpoint(SHIPPED), reason="shipped classifier not present")
def test_the_shipped_classifier_is_the_default_of_classify_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./checkpoints/ of the user's
    poems = ["床前明月光，疑是地上霜。举头望明月，低头思故乡。",  # 李白
             "横看成岭侧成峰，远近高低各不同。不识庐山真面目，只缘身在此山中。"]  # 苏轼
    r = run("classify", "--json", poems[0])
    assert r.exit_code == 0, r.stderr
    assert f"checkpoint: {SHIPPED} (the model shipped with charlm)" in r.stderr
    assert json.loads(r.stdout)["results"][0]["label"] == "tang"
    r = run("classify", poems[1])
    assert r.stdout.startswith("song\t")
    r = run("generate", "--max-chars", 5, "--seed", 1)
    assert r.exit_code == 0 and f"{checkpoint.shipped_checkpoint()} (the model shipped with charlm)" in r.stderr
    size = sum(f.stat().st_size for f in SHIPPED.iterdir() if f.name != "metrics.jsonl")
    assert size <= 4 * 10**6  # several models share the wheel's 60 MB
