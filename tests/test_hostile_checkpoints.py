"""Checkpoints are untrusted input: every tampered file is one sentence on stderr, never a traceback,
a hang, a huge allocation or NaN in JSON. Each case copies the real tiny checkpoint, tampers with
one thing and runs the commands as a user would."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file, save_model
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app
from charlm.config import Config, ModelConfig
from charlm.errors import CharLMError
from charlm.model import CharLM, expected_shapes

runner = CliRunner()
COMMANDS = (["generate", "--seed", "1", "--max-chars", "12"], ["eval"], ["eval", "--json"])


# -- tampering helpers -------------------------------------------------------------------------

def edit_json(name, change):
    def tamper(d):
        data = json.loads((d / name).read_text(encoding="utf-8"))
        change(data)
        (d / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return tamper


def model_field(**fields):
    return edit_json("config.json", lambda m: m["config"]["model"].update(fields))


def write(name, text):
    return lambda d: (d / name).write_text(text, encoding="utf-8")


def raw_config(old, new):
    """Replace text in config.json as written (for what json.dumps would not write, e.g. NaN)."""
    def tamper(d):
        text = (d / "config.json").read_text(encoding="utf-8")
        assert old in text
        (d / "config.json").write_text(text.replace(old, new, 1), encoding="utf-8")
    return tamper


def replace_with_dir(name):
    def tamper(d):
        (d / name).unlink()
        (d / name).mkdir()
    return tamper


def replace_with_link(name, target):
    def tamper(d):
        (d / name).unlink()
        (d / name).symlink_to(target)
    return tamper


def replace_with_fifo(name):
    def tamper(d):
        (d / name).unlink()
        os.mkfifo(d / name)
    return tamper


def grow(name, size):
    return lambda d: os.truncate(d / name, size)  # sparse: a large size without writing the bytes


def tensors(d):
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def edit_weights(change):
    def tamper(d):
        ts, meta = tensors(d)
        change(ts)
        save_file(ts, str(d / "model.safetensors"), metadata=meta)
    return tamper


def set_value(name, value):
    def change(ts):
        ts[name] = ts[name].clone()
        ts[name].view(-1)[3] = value
    return edit_weights(change)


def raw_weights(header: dict, data: bytes = b""):
    def tamper(d):
        h = json.dumps(header).encode()
        (d / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + data)
    return tamper


def truncate_weights(d):
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])


def bigger_model_weights(d):
    """Weights of a model with hidden size 32 under a config that says 24."""
    meta = json.loads((d / "config.json").read_text(encoding="utf-8"))
    config = Config.from_dict(meta["config"]).model
    config.hidden_size = 32
    save_model(CharLM(config), str(d / "model.safetensors"))


def vocab_chars(change):
    return edit_json("vocab.json", lambda v: change(v["chars"]))


def set_item(i, value):
    def change(items):
        items[i] = value
    return change


# -- the matrix: (case, tampering, a word the message must contain) -----------------------------

CASES = [
    # config.json
    ("config-null", write("config.json", "null"), "config.json"),
    ("config-section-null", edit_json("config.json", lambda m: m.update(config=None)), "config"),
    ("model-null", edit_json("config.json", lambda m: m["config"].update(model=None)), "'model'"),
    ("model-list", edit_json("config.json", lambda m: m["config"].update(model=[1, 2])), "'model'"),
    ("train-missing", edit_json("config.json", lambda m: m["config"].pop("train")), "'train'"),
    ("hidden-3-million", model_field(hidden_size=3_000_000), "hidden 3000000"),
    ("hidden-beyond-bound", model_field(hidden_size=10**30), "hidden_size"),
    ("hidden-string", model_field(hidden_size="24"), "hidden_size"),
    ("hidden-bool", model_field(hidden_size=True), "hidden_size"),
    ("hidden-negative", model_field(hidden_size=-24), "hidden_size"),
    ("layers-zero", model_field(num_layers=0), "num_layers"),
    ("layers-float", model_field(num_layers=2.0), "num_layers"),
    ("unknown-cell", model_field(cell="transformer"), "cell"),
    ("cell-with-markup-and-escape", model_field(cell="[/red]\x1b[31m"), "cell"),
    ("dropout-list", model_field(dropout=[0.1]), "dropout"),
    ("cutoffs-decreasing", model_field(softmax="adaptive", cutoffs=[9, 3]), "cutoffs"),
    ("dropout-nan", raw_config('"dropout": 0.1', '"dropout": NaN'), "NaN"),
    ("lr-infinity", edit_json("config.json", lambda m: m["config"]["train"].update(lr=float("inf"))), "Infinity"),
    ("deep-nesting", write("config.json", "[" * 200_000 + "]" * 200_000), "config.json"),
    ("config-not-utf8", lambda d: (d / "config.json").write_bytes(b"\xff\xfe{}"), "config.json"),
    ("config-directory", replace_with_dir("config.json"), "config.json"),
    ("config-dev-zero", replace_with_link("config.json", "/dev/zero"), "config.json"),
    ("config-fifo", replace_with_fifo("config.json"), "config.json"),
    ("config-65-mib", grow("config.json", 65 * 2**20), "64 MiB"),
    ("format-version-string", edit_json("config.json", lambda m: m.update(format_version="1")), "format version"),
    ("metrics-list", edit_json("config.json", lambda m: m.update(metrics=[1])), "metrics"),
    ("corpus-path-number", edit_json("config.json", lambda m: m["corpus"].update(path=7)), "corpus path"),
    ("vocab-size-mismatch", edit_json("config.json", lambda m: m["config"]["model"].update(
        vocab_size=m["config"]["model"]["vocab_size"] + 1)), "vocabulary"),
    # vocab.json
    ("vocab-missing", lambda d: (d / "vocab.json").unlink(), "vocab.json"),
    ("vocab-top-list", write("vocab.json", "[]"), "vocab.json"),
    ("vocab-chars-string", edit_json("vocab.json", lambda v: v.update(chars="春眠")), "chars"),
    ("vocab-entry-number", vocab_chars(set_item(5, 7)), "entry 5"),
    ("vocab-entry-empty", vocab_chars(set_item(5, "")), "entry 5"),
    ("vocab-entry-two-chars", vocab_chars(set_item(5, "春眠")), "entry 5"),
    ("vocab-duplicate", vocab_chars(lambda c: c.__setitem__(6, c[5])), "more than once"),
    ("vocab-no-unk-first", vocab_chars(lambda c: c.reverse()), "vocab.json"),
    ("counts-wrong-length", edit_json("vocab.json", lambda v: v["counts"].pop()), "counts"),
    ("counts-negative", edit_json("vocab.json", lambda v: v["counts"].__setitem__(4, -3)), "count 4"),
    ("counts-fraction", edit_json("vocab.json", lambda v: v["counts"].__setitem__(4, 2.5)), "count 4"),
    ("vocab-fifo", replace_with_fifo("vocab.json"), "vocab.json"),
    # model.safetensors
    ("weights-missing", lambda d: (d / "model.safetensors").unlink(), "model.safetensors"),
    ("weights-garbage", lambda d: (d / "model.safetensors").write_bytes(b"not a safetensors file"),
     "model.safetensors"),
    ("weights-truncated", truncate_weights, "model.safetensors"),
    ("weights-fifo", replace_with_fifo("model.safetensors"), "model.safetensors"),
    ("weights-oversized", grow("model.safetensors", 2**30), "model.safetensors"),
    ("weights-header-huge-tensor", raw_weights(
        {"rnn.weight_hh_l0": {"dtype": "F32", "shape": [2**31, 2**31], "data_offsets": [0, 16]}}, bytes(16)),
     "model.safetensors"),
    ("weights-wrong-shape", bigger_model_weights, "tensor rnn.weight_ih_l0 has shape (128, 16)"),
    ("weights-config-wider", model_field(hidden_size=32), "rnn.weight_ih_l0 has shape (96, 16)"),
    ("weights-tensor-missing", edit_weights(lambda ts: ts.pop("rnn.bias_hh_l0")), "rnn.bias_hh_l0"),
    ("weights-tensor-unexpected", edit_weights(lambda ts: ts.update(extra=torch.zeros(2))), "'extra'"),
    ("weights-int-dtype", edit_weights(lambda ts: ts.update(
        {"rnn.weight_hh_l0": torch.zeros(96, 24, dtype=torch.int32)})), "floating point"),
    ("weights-nan", set_value("rnn.weight_hh_l0", float("nan")), "non-finite weights in tensor rnn.weight_hh_l0"),
    ("weights-inf", set_value("embed.weight", float("-inf")), "non-finite weights in tensor embed.weight"),
    # lines.txt
    ("lines-fifo", replace_with_fifo("lines.txt"), "lines.txt"),
    ("lines-not-utf8", lambda d: (d / "lines.txt").write_bytes(b"\xff\xff\n"), "lines.txt"),
]


@pytest.fixture
def copy(trained, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(checkpoint.unit_dir(trained), d)  # the files of its best unit, flat as shipped models are
    return d


def run(d, command):
    return runner.invoke(app, [*command, "--checkpoint", str(d)])


def assert_one_clear_error(r, word):
    assert r.exit_code == 1, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.stdout == "" and "NaN" not in r.stdout
    assert "Traceback" not in r.stderr
    before, found, message = r.stderr.partition("error: ")
    assert found and (before == "" or before.startswith("checkpoint: ")), r.stderr  # only the status line
    assert message.count("\n") == 1 and message.endswith("\n"), r.stderr  # one line, the last
    assert word in message, message
    assert "\x1b" not in message  # a control character from the file comes out escaped
    assert len(message) < 400


@pytest.mark.parametrize("tamper, word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_tampered_checkpoint_is_one_sentence(copy, tamper, word, request):
    tamper(copy)
    lines_only = request.node.callspec.id.startswith("lines-")
    for command in COMMANDS:
        r = run(copy, command)
        if lines_only:  # only --novel reads the training lines: elsewhere nothing is wrong
            assert r.exit_code == 0 and "Traceback" not in r.stderr, r.stderr
        else:
            assert_one_clear_error(r, word)
    if lines_only:
        assert_one_clear_error(run(copy, [*COMMANDS[0], "--novel"]), word)


def test_an_untouched_copy_loads_generates_and_evaluates(copy):
    r = run(copy, COMMANDS[0])
    assert r.exit_code == 0 and r.stdout.strip() and "error" not in r.stderr, r.stderr
    r = run(copy, COMMANDS[2])
    assert r.exit_code == 0, r.stderr
    assert math.isfinite(json.loads(r.stdout)["bpc"])


def test_markup_and_control_characters_from_a_file_are_shown_escaped(copy):
    model_field(cell="[/red]\x1b[31m")(copy)
    r = run(copy, COMMANDS[0])
    assert "'[/red]\\x1b[31m'" in r.stderr


def test_the_parameter_cap_is_checked_before_anything_is_allocated(copy, monkeypatch):
    """hidden_size 3,000,000 used to die in CharLM(config) trying to allocate 144 TB."""
    def refuse(*a, **k):
        raise AssertionError("a model was built before the checks")

    monkeypatch.setattr(checkpoint, "CharLM", refuse)
    model_field(hidden_size=3_000_000)(copy)
    with pytest.raises(CharLMError, match=r"larger than the 2,000,000,000"):
        checkpoint.load(copy)


def test_overflowing_figures_are_an_error_not_nan_in_json(copy):
    """Finite weights whose logits overflow fp32: eval fails with a sentence, never prints NaN."""
    def change(ts):
        bias = ts["head.bias"].clone()
        bias[2], bias[3] = 3e38, -3e38  # finite, but log-softmax of -3e38 against 3e38 is -inf
        ts["head.bias"] = bias
    edit_weights(change)(copy)
    for command in COMMANDS[1:]:
        assert_one_clear_error(run(copy, command), "not a usable number")


def test_read_json_file_is_shared_and_bounded(tmp_path):
    p = tmp_path / "state.json"
    p.write_text('{"a": 1}', encoding="utf-8")
    assert checkpoint.read_json_file(p, "resume state") == {"a": 1}
    with pytest.raises(CharLMError, match="resume state has a state.json of 8 bytes, over the limit of 4 bytes"):
        checkpoint.read_json_file(p, "resume state", max_bytes=4)


# -- expected shapes agree with the real model ----------------------------------------------------

SHAPE_CONFIGS = {
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru"),
    "rnn": dict(cell="rnn"),
    "irnn": dict(cell="irnn"),
    "conv": dict(conv_kernel=3),
    "residual": dict(residual=True, num_layers=3),
    "locked": dict(locked_dropout=True, cell="gru"),
    "untied": dict(tie_weights=False),
    "tied-same-size": dict(embed_dim=12),
    "adaptive": dict(softmax="adaptive", vocab_size=40),
    "adaptive-cutoffs": dict(softmax="adaptive", vocab_size=40, cutoffs=[5, 20], hidden_size=32),
}


@pytest.mark.parametrize("kw", SHAPE_CONFIGS.values(), ids=SHAPE_CONFIGS.keys())
def test_expected_shapes_match_the_saved_model_exactly(tmp_path, kw):
    config = ModelConfig(**{**dict(vocab_size=30, embed_dim=8, hidden_size=12, num_layers=2), **kw})
    model = CharLM(config)
    save_model(model, str(tmp_path / "m.safetensors"))
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    shapes = expected_shapes(config)
    assert shapes == saved
    state = model.state_dict()
    assert all(tuple(state[k].shape) == s for k, s in shapes.items())
    assert sum(math.prod(s) for s in shapes.values()) == sum(p.numel() for p in model.parameters())
