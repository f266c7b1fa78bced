"""Hostile user input through the CLI: markup in names, control characters, numbers at the edges,
files in the wrong encoding. Every case ends in a result or one `error:` sentence — never a
traceback, never raw terminal escapes, never a changed user file."""

import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from charlm import checkpoint
from charlm.cli import app
from charlm.config import SEED_MAX
from charlm.data import read_corpus
from charlm.errors import CharLMError
from charlm.sample import SampleSettings, check_prompt, sample_poems, scale
from charlm.vocab import EOS_ID, UNK_ID, printable

from conftest import POEMS

runner = CliRunner()
POEM = POEMS[2]  # 白日依山尽，黄河入海流。欲穷千里目，更上一层楼。


@pytest.fixture
def files(tmp_path, trained):
    """The user's files: poems and corpora in several encodings and shapes, and checkpoints."""
    text = "\n".join(POEMS[:4]) + "\n"
    w = lambda name, data: (tmp_path / name).write_bytes(data)  # noqa: E731
    w("a[bold]b.txt", (POEM + "\n").encode())
    (tmp_path / "m[").mkdir()  # "/" separates folders, so a name holding "[/" is a folder "m[" and a file "x].txt"
    w("m[/x].txt", text.encode())
    w("markup.txt", f"[/x]{POEM}\n[bold]{POEMS[0]}[/bold]\n".encode())
    w("ansi.txt", f"白日\x1b[31m依山尽，黄河入海流。\x1b[0m\n{POEMS[1]}\n".encode())
    w("c1.txt", "白日\x9b依山尽，\u2028黄河入海流。\u202e\n".encode())
    w("utf16le.txt", text.encode("utf-16-le").join([b"\xff\xfe", b""]))
    w("utf16be.txt", text.encode("utf-16-be").join([b"\xfe\xff", b""]))
    w("utf32le.txt", text.encode("utf-32-le").join([b"\xff\xfe\x00\x00", b""]))
    w("utf32be.txt", text.encode("utf-32-be").join([b"\x00\x00\xfe\xff", b""]))
    w("binary.bin", bytes(range(256)) * 4)
    w("gbk.txt", (POEM + "\n").encode("gbk"))
    w("empty.txt", b"\n  \n")
    (tmp_path / "folder").mkdir()
    shutil.copytree(trained, tmp_path / "ck[bold]x")
    # a checkpoint whose weights hold NaN (e.g. a diverged run), with its metadata kept
    nan = tmp_path / "nan"
    shutil.copytree(checkpoint.unit_dir(trained), nan)  # the best unit's files, flat
    with safe_open(str(nan / "model.safetensors"), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    for t in tensors.values():
        t.fill_(math.nan)
    save_file(tensors, str(nan / "model.safetensors"), metadata=meta)
    return {"tmp": tmp_path, "trained": trained}


def _snapshot(*roots: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


G = ["generate", "--checkpoint", "{trained}", "--max-chars", "4", "--seed", "1"]
E = ["eval", "--checkpoint", "{trained}"]
OK, ERR, USAGE = 0, 1, 2

# (args, exit code, key word: in stdout for successes, in the one error line / usage panel otherwise)
CASES = {
    # -- rich markup in paths, prompts and poems is printed literally ----------------------------
    "markup-missing-checkpoint": (["generate", "--checkpoint", "{tmp}/a[/x]"], ERR, "a[/x]"),
    "markup-missing-poems-file": ([*E, "--poems", "{tmp}/x[/b].txt"], ERR, "x[/b].txt"),
    "markup-missing-corpus": ([*E, "--corpus", "{tmp}/c[/b].txt"], ERR, "c[/b].txt"),
    "markup-checkpoint-name": (["generate", "--checkpoint", "{tmp}/ck[bold]x", "--prompt", "春", "--seed", "1",
                                "--max-chars", "3"], OK, "春"),
    "markup-poems-file-name": ([*E, "--poems", "{tmp}/a[bold]b.txt"], OK, "form-valid"),
    "markup-corpus-name-json": ([*E, "--corpus", "{tmp}/m[/x].txt", "--json"], OK, "m[/x].txt"),
    "markup-prompt-bold": ([*G, "--prompt", "[bold]春"], OK, "[bold]春"),
    "markup-prompt-close": ([*G, "--prompt", "[/red]", "-n", "2"], OK, "[/red]"),
    "markup-prompt-json": ([*G, "--prompt", "[bold]", "--json"], OK, '"[bold]'),
    "markup-acrostic": ([*G, "--acrostic", "[/x]"], ERR, "[ / x ]"),
    "markup-form": ([*G, "--form", "[/b]"], ERR, "'[/b]'"),
    "markup-in-poems": ([*E, "--poems", "{tmp}/markup.txt"], OK, "[/x]"),
    # -- control characters ----------------------------------------------------------------------
    "prompt-newline": ([*G, "--prompt", "春\n风"], ERR, "newline"),
    "prompt-carriage-return": ([*G, "--prompt", "春\r风"], ERR, "newline"),
    "prompt-escape-sequence": ([*G, "--prompt", "春\x1b[31m风"], ERR, "control character \\x1b"),
    "prompt-bidi-override": ([*G, "--prompt", "春\u202e风"], ERR, "control character \\u202e"),
    "prompt-nul": ([*G, "--prompt", "春\x00"], ERR, "control character \\x00"),
    "ansi-in-poems": ([*E, "--poems", "{tmp}/ansi.txt"], OK, "\\x1b[31m"),
    "ansi-in-poems-json": ([*E, "--poems", "{tmp}/ansi.txt", "--json"], OK, "\\u001b[31m"),
    "c1-and-separators-json": ([*E, "--poems", "{tmp}/c1.txt", "--json"], OK, "\\u2028"),
    # -- seeds -----------------------------------------------------------------------------------
    "seed-negative": ([*G[:-2], "--seed", "-1"], USAGE, "--seed"),
    "seed-2**64": ([*G[:-2], "--seed", str(2**64)], USAGE, "--seed"),
    "seed-10**20": ([*G[:-2], "--seed", str(10**20)], USAGE, "--seed"),
    "seed-max": ([*G[:-2], "--seed", str(SEED_MAX), "--prompt", "春"], OK, "春"),
    "eval-generate-seed-negative": ([*E, "--generate", "1", "--seed", "-5"], USAGE, "--seed"),
    # -- temperature, top-k, top-p, lengths ------------------------------------------------------
    "temperature-1e-45": ([*G, "--prompt", "春", "--temperature", "1e-45"], OK, "春"),
    "temperature-1e-45-form": ([*G[:3], "--seed", "1", "--form", "五绝", "--rhyme", "--temperature", "1e-45"], OK, "。"),
    "temperature-1e300": ([*G, "--prompt", "春", "--temperature", "1e300"], OK, "春"),
    "temperature-0": ([*G, "--temperature", "0"], ERR, "--temperature"),
    "temperature-negative": ([*G, "--temperature", "-1"], ERR, "--temperature"),
    "temperature-nan": ([*G, "--temperature", "nan"], ERR, "--temperature"),
    "temperature-inf": ([*G, "--temperature", "inf"], ERR, "--temperature"),
    "eval-generate-temperature-nan": ([*E, "--generate", "1", "--temperature", "nan"], ERR, "--temperature"),
    "top-p-0": ([*G, "--top-p", "0"], ERR, "--top-p"),
    "top-p-1.5": ([*G, "--top-p", "1.5"], ERR, "--top-p"),
    "top-p-nan": ([*G, "--top-p", "nan"], ERR, "--top-p"),
    "top-k-negative": ([*G, "--top-k", "-1"], ERR, "--top-k"),
    "max-chars-0": ([*G[:-4], "--max-chars", "0"], ERR, "--max-chars"),
    "n-0": ([*G, "-n", "0"], USAGE, "-n"),
    "eval-generate-0": ([*E, "--generate", "0"], USAGE, "--generate"),
    # -- files -----------------------------------------------------------------------------------
    "corpus-utf16le": ([*E, "--corpus", "{tmp}/utf16le.txt"], ERR, "UTF-16 byte-order mark"),
    "corpus-utf16be": ([*E, "--corpus", "{tmp}/utf16be.txt"], ERR, "UTF-16 byte-order mark"),
    "poems-utf32le": ([*E, "--poems", "{tmp}/utf32le.txt"], ERR, "UTF-32 byte-order mark"),
    "poems-utf32be": ([*E, "--poems", "{tmp}/utf32be.txt"], ERR, "UTF-32 byte-order mark"),
    "poems-utf16-with-encoding": ([*E, "--poems", "{tmp}/utf16le.txt", "--encoding", "utf-16"], OK, "form-valid"),
    "corpus-binary": ([*E, "--corpus", "{tmp}/binary.bin"], ERR, "NUL bytes"),
    "poems-gbk": ([*E, "--poems", "{tmp}/gbk.txt"], ERR, "--encoding gbk"),
    "corpus-empty": ([*E, "--corpus", "{tmp}/empty.txt"], ERR, "empty"),
    "poems-directory": ([*E, "--poems", "{tmp}/folder"], ERR, "directory"),
    "corpus-missing": ([*E, "--corpus", "{tmp}/nope.txt"], ERR, "does not exist"),
    "unknown-encoding": ([*E, "--corpus", "{tmp}/m[/x].txt", "--encoding", "klingon"], ERR, "unknown encoding"),
    "unknown-form": ([*G, "--form", "sonnet"], ERR, "unknown poem form"),
    "checkpoint-is-a-file": (["generate", "--checkpoint", "{tmp}/a[bold]b.txt"], ERR, "not a directory"),
    # -- a checkpoint with NaN weights -----------------------------------------------------------
    "nan-weights-generate": (["generate", "--checkpoint", "{tmp}/nan"], ERR, "non-finite weights"),
    "nan-weights-eval-json": (["eval", "--checkpoint", "{tmp}/nan", "--corpus", "{tmp}/m[/x].txt", "--json"],
                              ERR, "non-finite weights"),
}


@pytest.mark.parametrize("args, code, key", CASES.values(), ids=CASES.keys())
def test_hostile_input(files, args, code, key):
    before = _snapshot(files["tmp"], files["trained"])
    r = runner.invoke(app, [a.format(**files) for a in args])
    out = r.stdout + r.stderr
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in out
    assert "\x1b" not in out  # the runner is no terminal: any ESC would be the user's, unescaped
    assert r.exit_code == code, out
    if code == OK:
        assert key in r.stdout
        assert not any(line.startswith("error") for line in r.stderr.splitlines())
    elif code == ERR:
        assert r.stdout == ""
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and r.stderr.splitlines()[-1] == errors[0], r.stderr
        assert key in errors[0]
    else:  # a usage error from Typer, naming the option
        assert r.stdout == "" and "Usage:" in r.stderr and key in r.stderr
    assert _snapshot(files["tmp"], files["trained"]) == before  # nothing the user had was changed


def test_markup_like_names_are_printed_as_they_are(files):
    r = runner.invoke(app, ["generate", "--checkpoint", str(files["tmp"] / "ck[bold]x"), "--seed", "1",
                            "--max-chars", "3"])
    assert r.exit_code == 0 and "ck[bold]x (given with --checkpoint)" in r.stderr
    r = runner.invoke(app, ["generate", "--checkpoint", str(files["trained"]), "--prompt", "[b]春", "--seed", "1",
                            "--max-chars", "3"])
    assert r.exit_code == 0 and "read as unknown: [ b ]" in r.stderr


def test_json_escapes_come_back_exactly(files):
    r = runner.invoke(app, ["eval", "--checkpoint", str(files["trained"]), "--poems", str(files["tmp"] / "c1.txt"),
                            "--json"])
    assert r.exit_code == 0, r.stderr
    assert "\u2028" not in r.stdout and "\x9b" not in r.stdout and "\u202e" not in r.stdout
    assert json.loads(r.stdout)["poems"][0]["text"] == "白日\x9b依山尽，\u2028黄河入海流。\u202e"


def _greedy(ckpt, prompt: str, n: int) -> str:
    """The likeliest continuation, re-reading the whole text each step (no carried state)."""
    text = prompt
    for _ in range(n):
        ids = torch.tensor([[EOS_ID, *ckpt.vocab.encode(text)]])
        with torch.no_grad():
            logits = ckpt.model(ids)[0][0, -1]
        logits[UNK_ID] = -math.inf
        t = int(logits.argmax())
        if t == EOS_ID:
            break
        text += ckpt.vocab.chars[t]
    return text


def test_tiny_temperature_is_greedy(trained):
    ckpt = checkpoint.load(trained)
    want = _greedy(ckpt, "春", 12)
    assert len(want) > 3
    for seed in ("1", "2"):
        r = runner.invoke(app, ["generate", "--checkpoint", str(trained), "--prompt", "春", "--seed", seed,
                                "--max-chars", "12", "--temperature", "1e-45"])
        assert r.exit_code == 0 and r.stdout == want + "\n", (r.stdout, want)
    rows = sample_poems(ckpt.model, ckpt.vocab, "春", 8, settings=SampleSettings(temperature=1e-300, max_chars=12),
                        generator=torch.Generator().manual_seed(0))
    assert {x.text for x in rows} == {want}


def test_scale_limits():
    logits = torch.tensor([[0.0, 1.0, 3.0, 2.0, -math.inf]])
    tiny = scale(logits, 1e-45)
    assert tiny[0, 2] == 0 and (tiny[0, [0, 1, 3, 4]] < -1e44).all()
    assert torch.equal(torch.softmax(tiny, -1), torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0]], dtype=torch.float64))
    huge = torch.softmax(scale(logits, 1e300), -1)
    assert torch.allclose(huge[0, :4], torch.full((4,), 0.25, dtype=torch.float64)) and huge[0, 4] == 0
    assert torch.equal(scale(torch.full((1, 3), -math.inf), 0.5), torch.full((1, 3), -math.inf, dtype=torch.float64))


@pytest.mark.parametrize("text, shown", [
    ("春眠", "春眠"),
    ("a\x1b[31mb", "a\\x1b[31mb"),
    ("一\n二\t三\r", "一\\n二\\t三\\r"),
    ("\x9b\x7f", "\\x9b\\x7f"),
    ("\u200e\u2028\u2029\ufeff", "\\u200e\\u2028\\u2029\\ufeff"),
    ("\U000e0001", "\\U000e0001"),
    ("a\udcffb", "a\\udcffb"),  # an undecodable byte in a file name
    ("\u3000春 [bold]", "\u3000春 [bold]"),  # ideographic space and brackets are printable
])
def test_printable(text, shown):
    assert printable(text) == shown


@pytest.mark.parametrize("prompt, ok", [("春风", True), ("[bold]", True), ("春\u3000风", True), ("春\n", False),
                                        ("\t春", False), ("春\u2028", False), ("春\x85", False)])
def test_check_prompt(prompt, ok):
    if ok:
        check_prompt(prompt)
    else:
        with pytest.raises(CharLMError, match="prompt holds"):
            check_prompt(prompt)


def test_read_corpus_accepts_the_encoding_its_byte_order_mark_names(tmp_path):
    p = tmp_path / "x.txt"
    p.write_bytes("春眠不觉晓\n".encode("utf-32"))
    assert read_corpus(p, "utf-32") == "春眠不觉晓\n"
    with pytest.raises(CharLMError, match="poems file .* UTF-32 text .* --encoding utf-32"):
        read_corpus(p, what="poems file")
