"""The command line: parse options, call the library, render with rich.

No training maths, sampling or file formats here; errors from the library (CharLMError) become
one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from charlm.config import DEFAULT_EPOCHS, SEED_MAX, Config, ModelConfig, TrainConfig, parse_duration, parse_unk_alpha
from charlm.errors import CharLMError
from charlm.vocab import is_unprintable, printable

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="charlm: a character-level recurrent language model for classical Chinese poetry.",
)
err = Console(stderr=True, highlight=False)
_M, _T = ModelConfig(), TrainConfig()

CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="Checkpoint directory. Default: the newest under ./checkpoints/, else the shipped model.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
EncodingOpt = Annotated[str, typer.Option("--encoding", help="Text encoding of the corpus file, e.g. gbk.")]


# -- showing user text -------------------------------------------------------------------------
# Paths, prompts, poems, samples and library messages are data, never rich markup: they reach rich
# as Text (so `a[bold]b` stays `a[bold]b` and `[/` cannot crash), with unprintable characters
# escaped (an ESC in a poems file is shown as \x1b, not obeyed by the terminal).

def _literal(text: object, style: str = "") -> Text:
    """User text for rich: printed as it is, never parsed as markup, unprintable characters escaped."""
    return Text(printable(str(text)), style=style)


def _say(label: str, style: str, message: object) -> None:
    """One diagnostic line on stderr: a styled label, then the message literally."""
    err.print(Text.assemble((label, style), " ", _literal(message)), soft_wrap=True)


def _fail(message: str, code: int = 1) -> None:
    _say("error:", "bold red", message)
    raise typer.Exit(code)


def _need_stdout(what: str) -> None:
    """Refuse to work for nothing: with standard output closed (`>&-`) Python drops every print."""
    if sys.stdout is None:
        _fail(f"standard output is closed, so there is nowhere to write {what}")


def _print_line(text: str) -> None:
    """A poem or sample on stdout, one line, unprintable characters escaped."""
    print(printable(text), flush=True)


def _json_escape(ch: str) -> str:
    cp = ord(ch)
    if cp > 0xFFFF:  # JSON writes astral characters as a surrogate pair
        cp -= 0x10000
        return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"
    return f"\\u{cp:04x}"


def _dumps(data: dict) -> str:
    """One JSON object for stdout: strict JSON (a NaN or infinity is refused with a sentence), with
    unprintable characters as \\u escapes so a reader gets them back and a terminal shows them."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise CharLMError("the result holds a number that is not finite (NaN or infinity), which JSON cannot "
                          "carry; the checkpoint's weights may be broken") from None
    if text.isprintable():
        return text
    return "".join(_json_escape(c) if is_unprintable(c) else c for c in text)


def _load(checkpoint_dir: Optional[Path]):
    from charlm import checkpoint

    path, why = checkpoint.find_default(checkpoint_dir)
    ckpt = checkpoint.load(path)
    err.print(_literal(f"checkpoint: {path} ({why})", style="dim"), soft_wrap=True)
    return ckpt


# -- train -------------------------------------------------------------------------------------

class _Display:
    """Rich live display for the trainer's callbacks. A terminal that goes away (closed stderr,
    a hung-up ssh session) silences the display; training goes on and saves as usual."""

    def __init__(self, progress: Progress, sample_seed: int) -> None:
        self.progress = progress
        self.task = progress.add_task("training", total=1000, stats="")
        self.sample_seed = sample_seed
        self.alive = True

    def _show(self, show) -> None:
        if not self.alive:
            return
        try:
            show()
        except (OSError, ValueError):  # the stream is closed: keep training without a display
            self.alive = False

    def close(self) -> None:
        if self.progress.live.is_started:
            self._show(self.progress.stop)

    def on_start(self, info) -> None:
        self._show(self.progress.start)  # only now: an error before the first step shows no bar
        resumed = f", resumed at step {info.resumed_from}" if info.resumed_from else ""
        self._show(lambda: self.progress.console.print(Text(
            f"corpus {info.corpus_chars:,} characters: {info.train_poems:,} training / {info.valid_poems:,} "
            f"validation lines; vocabulary {info.vocab_size:,}; {info.parameters:,} parameters; "
            f"{info.precision}; batch {info.batch_size}{resumed}"), soft_wrap=True))

    def on_step(self, e) -> None:
        self._show(lambda: self.progress.update(
            self.task, completed=min(1000, int(e.progress * 1000)), description=f"step {e.step}",
            stats=f"loss {e.loss:.2f} bpc {e.bpc:.2f} {e.chars_per_sec / 1000:.1f}k char/s lr {e.lr:.0e}",
        ))

    def on_valid(self, e, model, vocab) -> None:
        import torch

        from charlm.sample import SampleSettings, generate

        if not self.alive:
            return
        g = torch.Generator().manual_seed(self.sample_seed)
        was_training = model.training
        try:
            sample = generate(model, vocab, settings=SampleSettings(temperature=0.8, max_chars=64), generator=g)
        except CharLMError as failure:  # e.g. weights gone non-finite: the trainer will say so
            sample = f"(no sample: {failure})"
        finally:
            model.train(was_training)
        line = Text(f"step {e.step}: validation bpc ({e.valid_chars:,}-character subset) ")
        line.append(f"{e.valid_bpc:.3f}", style="bold")
        if e.improved:
            line.append(" best", style="green")
        line.append("  " + printable(sample))
        self._show(lambda: self.progress.console.print(line, soft_wrap=True))


# Each training option and the configuration field it sets: what --resume compares and keeps.
TRAIN_FIELDS = {
    "embed": "model.embed_dim", "hidden": "model.hidden_size", "layers": "model.num_layers",
    "dropout": "model.dropout", "tie": "model.tie_weights", "cell": "model.cell",
    "conv_kernel": "model.conv_kernel", "residual": "model.residual", "embed_dropout": "model.embed_dropout",
    "locked_dropout": "model.locked_dropout", "softmax": "model.softmax",
    "seq_len": "train.seq_len", "batch_size": "train.batch_size", "lr": "train.lr",
    "weight_decay": "train.weight_decay", "clip": "train.clip", "warmup": "train.warmup_steps",
    "valid_fraction": "train.valid_fraction", "min_count": "train.min_count",
    "eval_interval": "train.eval_interval", "save_every": "train.save_every", "unk_alpha": "train.unk_alpha",
    "ema": "train.ema", "precision": "train.precision", "encoding": "train.encoding",
    "max_steps": "train.max_steps", "max_time": "train.max_time", "epochs": "train.epochs", "seed": "train.seed",
}


def _given_options(ctx: typer.Context) -> dict[str, str]:
    """The configuration fields the user set on the command line, each with its flag."""
    given = {}
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)  # an enum: COMMANDLINE, ENVIRONMENT, DEFAULT, ...
        if param.name in TRAIN_FIELDS and source is not None and source.name != "DEFAULT":
            given[TRAIN_FIELDS[param.name]] = max(param.opts, key=len)
    return given


@app.command()
def train(
    ctx: typer.Context,
    corpus: Annotated[Path, typer.Argument(help="A UTF-8 text file; one poem (or paragraph) per line.")],
    out: Annotated[Optional[Path], typer.Option(help="Checkpoint directory. Default: checkpoints/<corpus stem>.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps.", min=1)] = None,
    max_time: Annotated[Optional[str], typer.Option(help="Stop after this much training time in all: 90s, 10m, 1h.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help=f"Stop after this many passes (default {DEFAULT_EPOCHS} when no budget is given).", min=1)] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation, data order, dropout and the split.", min=0, max=SEED_MAX)] = _T.seed,
    embed: Annotated[int, typer.Option(help="Embedding size.", min=1)] = _M.embed_dim,
    hidden: Annotated[int, typer.Option(help="LSTM hidden size.", min=1)] = _M.hidden_size,
    layers: Annotated[int, typer.Option(help="Number of stacked LSTM layers.", min=1)] = _M.num_layers,
    dropout: Annotated[float, typer.Option(help="Dropout on embeddings, between layers and before the output.")] = _M.dropout,
    tie: Annotated[bool, typer.Option("--tie/--no-tie", help="Share the embedding matrix with the output layer.")] = _M.tie_weights,
    cell: Annotated[str, typer.Option(help="Recurrent cell: lstm, gru, rnn (tanh) or irnn (ReLU, identity init).")] = _M.cell,
    conv_kernel: Annotated[int, typer.Option(help="Causal depthwise-separable convolution of this width before the recurrent layers (0 = off).", min=0)] = _M.conv_kernel,
    residual: Annotated[bool, typer.Option("--residual", help="Residual connections with layer norm between recurrent layers.")] = _M.residual,
    embed_dropout: Annotated[float, typer.Option(help="Drop whole characters' embeddings with this probability.")] = _M.embed_dropout,
    locked_dropout: Annotated[bool, typer.Option("--locked-dropout", help="Variational dropout: one mask per sequence for all time steps.")] = _M.locked_dropout,
    softmax: Annotated[str, typer.Option(help="Output layer: full, or adaptive (faster for large vocabularies; unties weights).")] = _M.softmax,
    seq_len: Annotated[int, typer.Option(help="Characters per training window (truncated BPTT length).", min=2)] = _T.seq_len,
    batch_size: Annotated[int, typer.Option(help="Parallel rows per batch.", min=1)] = _T.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).")] = _T.lr,
    weight_decay: Annotated[float, typer.Option(help="Decoupled weight decay on weight matrices.")] = _T.weight_decay,
    clip: Annotated[float, typer.Option(help="Clip gradients to this global norm (0 = off).")] = _T.clip,
    warmup: Annotated[int, typer.Option(help="Learning-rate warmup steps.", min=0)] = _T.warmup_steps,
    valid_fraction: Annotated[float, typer.Option(help="Share of poems held out for validation.")] = _T.valid_fraction,
    min_count: Annotated[int, typer.Option(help="Characters seen fewer times become <unk>.", min=1)] = _T.min_count,
    eval_interval: Annotated[int, typer.Option(help="Validate (and save the resume state) every this many steps.", min=1)] = _T.eval_interval,
    valid_chars: Annotated[int, typer.Option(help="Validate periodically on a fixed subset of the validation poems of about this many characters (the end of training scores the whole split).", min=1)] = _T.valid_chars,
    save_every: Annotated[float, typer.Option(help="Also save the resume state at least this often, in minutes.")] = _T.save_every,
    unk_alpha: Annotated[str, typer.Option(help="Teach the model unseen characters: a character seen c times is read as <unk> with probability F/(F+c). auto matches the Good-Turing estimate of unseen characters; 0 = off.")] = "auto",
    ema: Annotated[float, typer.Option(help="Also keep an exponential moving average of the weights with this decay, e.g. 0.998 (0 = off); saved when it validates better.")] = _T.ema,
    precision: Annotated[str, typer.Option(help="auto (bf16 where the CPU supports it), bf16 or fp32.")] = _T.precision,
    encoding: EncodingOpt = _T.encoding,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's choice).", min=1)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out with its saved settings; a new --max-steps, --max-time or --epochs replaces its budget.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start afresh even if --out holds another run, replacing it.")] = False,
) -> None:
    """Train a character-level LSTM on CORPUS; the best checkpoint by validation bpc goes to --out.

    The resume state is saved at every validation and every --save-every minutes: after a crash,
    a kill or Ctrl-C, `charlm train CORPUS --out DIR --resume` continues where it was saved.
    """
    from charlm.encoded import Source
    from charlm.train import train_corpus

    try:
        if resume and overwrite:
            raise CharLMError("give either --resume or --overwrite, not both")
        config = Config(
            ModelConfig(embed_dim=embed, hidden_size=hidden, num_layers=layers, dropout=dropout, tie_weights=tie,
                        cell=cell, conv_kernel=conv_kernel, residual=residual, embed_dropout=embed_dropout,
                        locked_dropout=locked_dropout, softmax=softmax),
            TrainConfig(
                seq_len=seq_len, batch_size=batch_size, lr=lr, weight_decay=weight_decay, clip=clip,
                warmup_steps=warmup, max_steps=max_steps, epochs=epochs, seed=seed,
                max_time=parse_duration(max_time) if max_time else None, valid_fraction=valid_fraction,
                min_count=min_count, eval_interval=eval_interval, valid_chars=valid_chars, save_every=save_every,
                precision=precision,
                encoding=encoding, ema=ema, unk_alpha=parse_unk_alpha(unk_alpha),
            ),
        )
        if threads:
            import torch

            torch.set_num_threads(threads)
        out_dir = out or Path("checkpoints") / corpus.stem
        columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=12), TaskProgressColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(compact=True)]
        display = _Display(Progress(*columns, console=err, transient=False), seed)
        try:
            result = train_corpus(Source(corpus, encoding), config, out_dir, corpus_path=str(corpus), callbacks=display, resume=resume,
                                  overwrite=overwrite, changed=_given_options(ctx) if resume else None)
        finally:
            display.close()
    except CharLMError as e:
        _fail(str(e))
        return
    except OSError as e:  # a file system failure the library did not foresee: still one sentence
        _fail(f"training stopped: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
              + "; the last complete checkpoint and resume state are kept")
        return
    table = Table(title="training summary", show_header=False)
    table.add_row("checkpoint", _literal(result.out))
    table.add_row("steps", f"{result.steps:,} ({result.epochs_done:.2f} epochs)")
    table.add_row("time", f"{result.elapsed:.0f} s")
    table.add_row("last training bpc", f"{result.last_train_bpc:.3f}")
    table.add_row(f"best validation bpc ({result.subset_chars:,}-character subset)", f"{result.best_valid_bpc:.3f}")
    if result.full_valid_bpc is not None:
        table.add_row(f"validation bpc of the best (full split, {result.full_valid_chars:,} characters)",
                      f"{result.full_valid_bpc:.3f}")
    if result.skipped:
        table.add_row("updates skipped (not finite)", f"{result.skipped:,}")
    _report(table)
    if result.interrupted:
        hint = f"charlm train {shlex.quote(str(corpus))} --out {shlex.quote(str(result.out))} --resume"
        _report(Text.assemble(f"stopped by {result.interrupted}; continue with: ", _literal(hint)))
        raise typer.Exit(130 if result.interrupted == "SIGINT" else 143)


def _report(renderable) -> None:
    """Print to stderr; a closed stderr (a terminal gone) is no reason to fail a finished run."""
    try:
        err.print(renderable, soft_wrap=True)
    except (OSError, ValueError):
        pass


# -- generate ----------------------------------------------------------------------------------

FormOpt = Annotated[Optional[str], typer.Option(
    help="Poem form: 五绝, 七绝, 五律, 七律 (or wujue, qijue, wulv, qilv): exact lines and characters.")]
AcrosticOpt = Annotated[Optional[str], typer.Option(help="藏头诗: line i starts with the i-th character.")]
RhymeOpt = Annotated[bool, typer.Option("--rhyme", help="Even lines end in one 平水韵 level-tone rhyme group (needs --form).")]
RhymeFirstOpt = Annotated[bool, typer.Option("--rhyme-first", help="The first line rhymes too (with --rhyme).")]
TonesOpt = Annotated[bool, typer.Option("--tones", help="Follow the 平仄 pattern of regulated verse (needs --form).")]
NovelOpt = Annotated[bool, typer.Option("--novel", help="No line may copy a line of the training text verbatim.")]
BestOfOpt = Annotated[int, typer.Option("--best-of", help="Sample K candidates per poem, keep the likeliest per character.", min=1)]
BeamOpt = Annotated[int, typer.Option("--beam", help="Beam search of this width instead of sampling (needs --form).", min=0)]
TemperatureOpt = Annotated[float, typer.Option(help=(
    "Sampling temperature, a finite number > 0; lower is safer. Scores are scaled as (logit − best) / T, "
    "so a tiny T such as 1e-9 always takes the likeliest character (greedy) and a huge one samples uniformly."))]
TopKOpt = Annotated[int, typer.Option(help="Sample among the k likeliest characters (0 = off).")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling: smallest set with this probability mass, in (0, 1].")]
SeedOpt = Annotated[Optional[int], typer.Option(
    help="Seed for reproducible samples, 0 … 2**63 − 1.", min=0, max=SEED_MAX)]


def _poem_spec(vocab, form, acrostic, rhyme, rhyme_first, tones, novel):
    from charlm.constrain import PoemSpec

    parsed = None
    if form:
        from charlm.poetry import parse_form

        parsed = parse_form(form)
    return PoemSpec(form=parsed, acrostic=vocab.normalize(acrostic or ""), rhyme=rhyme,
                    rhyme_first=rhyme_first, tones=tones, novel=novel)


def _sample(ckpt, prompt, n, spec, settings, best_of, beam, seed, on_char=None):
    """Run the sampler the options ask for; returns charlm.sample.Result objects."""
    import torch

    from charlm.sample import beam_poems, check_prompt, sample_poems

    text = ckpt.vocab.normalize(prompt)
    check_prompt(text)
    unknown = ckpt.vocab.unknown(text)
    if unknown:
        _say("warning:", "yellow", f"not in this model's vocabulary, read as unknown: {' '.join(unknown)}")
    if beam:
        return beam_poems(ckpt.model, ckpt.vocab, text, n, spec=spec, beam=beam, lines=ckpt.lines)
    g = torch.Generator()
    g.manual_seed(seed if seed is not None else torch.seed())
    return sample_poems(ckpt.model, ckpt.vocab, text, n, spec=spec, settings=settings, best_of=best_of,
                        lines=ckpt.lines, generator=g, on_char=on_char)


def _checks(text, spec):
    from charlm.poetry import check_poem

    c = check_poem(text, spec.form)
    return {"form": c.form, "form_valid": c.form_valid, "rhyme_valid": c.rhyme_valid, "rhyme_group": c.rhyme_group,
            "tone_agreement": c.tone_agreement, "tone_valid": c.tone_valid, "pattern": c.pattern}


def _panel(result, checks, index):
    """A poem in a panel: one line per verse line, centred, with its score and checks below."""
    from rich.align import Align
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    lines = re.findall(r"[^，。？！；]+[，。？！；]?", result.text) or [result.text]
    bits = [f"{result.score:.2f} nats/char"]
    pattern = result.pattern or checks.get("pattern")  # the decoder's pattern under --tones
    for value in (checks.get("form"), pattern, checks.get("rhyme_group")):
        if value:
            bits.append(value.replace(checks.get("form") or "\0", "").strip() if value == pattern else value)
    info = Text(" · ".join(b for b in bits if b), style="dim")
    body = Group(*(Align.center(_literal(l)) for l in lines), Text(""), Align.center(info))
    return Panel(body, title=f"#{index + 1}", expand=False, padding=(0, 2))


@app.command()
def generate(
    checkpoint: CheckpointOpt = None,
    prompt: Annotated[str, typer.Option(help=(
        "Text the poem starts with (traditional characters are accepted); one line: a newline ends a poem, "
        "so a prompt holding one, or another control character, is refused."))] = "",
    n: Annotated[int, typer.Option("-n", help="Number of poems, decoded together in one batch.", min=1)] = 1,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    max_chars: Annotated[int, typer.Option(help="Stop a poem after this many new characters (at least 1).")] = 200,
    seed: SeedOpt = None,
    form: FormOpt = None,
    acrostic: AcrosticOpt = None,
    rhyme: RhymeOpt = False,
    rhyme_first: RhymeFirstOpt = False,
    tones: TonesOpt = False,
    novel: NovelOpt = False,
    best_of: BestOfOpt = 1,
    beam: BeamOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Write poems that continue --prompt; each stops at the end of the poem or --max-chars.

    A single poem streams to the terminal as it is written. With --form, --acrostic, --best-of or
    --beam on a terminal, each poem is shown in a panel with its score (mean log-probability per
    character); piped, stdout holds one poem per line.
    """
    from charlm.sample import SampleSettings

    _need_stdout("the poems")
    fancy = bool(form or acrostic or best_of > 1 or beam) and sys.stdout.isatty() and not as_json
    stream = n == 1 and best_of == 1 and not beam and not as_json and not fancy

    started = False

    def emit(ch: str) -> None:
        nonlocal started
        if not started:  # the prompt goes out with the first new character, once nothing can fail
            started = True
            sys.stdout.write(printable(ckpt.vocab.normalize(prompt)))
        sys.stdout.write(printable(ch))
        sys.stdout.flush()

    try:
        settings = SampleSettings(temperature=temperature, top_k=top_k, top_p=top_p, max_chars=max_chars)
        ckpt = _load(checkpoint)
        spec = _poem_spec(ckpt.vocab, form, acrostic, rhyme, rhyme_first, tones, novel)
        results = _sample(ckpt, prompt, n, spec, settings, best_of, beam, seed, on_char=emit if stream else None)
        if stream:
            sys.stdout.write(("" if started else printable(results[0].text)) + "\n")
        elif as_json:
            poems = [{"text": r.text, "logprob": r.logprob, "score": r.score, "pattern": r.pattern,
                      "checks": _checks(r.text, spec)} for r in results]
            print(_dumps({"checkpoint": str(ckpt.path), "samples": [r.text for r in results], "poems": poems}))
        elif fancy:
            out = Console()
            for i, r in enumerate(results):
                out.print(_panel(r, _checks(r.text, spec), i))
        else:
            for r in results:
                _print_line(r.text)
    except CharLMError as e:
        _fail(str(e))
    except BrokenPipeError:  # e.g. `charlm generate -n 9 | head -1`
        sys.stderr.close()
        raise typer.Exit(0)


# -- eval --------------------------------------------------------------------------------------

@app.command("eval")
def eval_(
    checkpoint: CheckpointOpt = None,
    corpus: Annotated[Optional[Path], typer.Option(help="Text to score. Default: the checkpoint's own validation split.")] = None,
    encoding: EncodingOpt = "utf-8",
    poems: Annotated[Optional[Path], typer.Option(help="Judge the poems in this file (one per line) instead.")] = None,
    generate_n: Annotated[Optional[int], typer.Option("--generate", help="Sample this many poems, then judge them.", min=1)] = None,
    form: FormOpt = None,
    acrostic: AcrosticOpt = None,
    rhyme: RhymeOpt = False,
    rhyme_first: RhymeFirstOpt = False,
    tones: TonesOpt = False,
    novel: NovelOpt = False,
    best_of: BestOfOpt = 1,
    beam: BeamOpt = 0,
    temperature: TemperatureOpt = 0.8,
    top_k: TopKOpt = 0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Report loss, bits per character, perplexity and accuracy on held-out text.

    With --poems FILE, or --generate N (sampling options as in `charlm generate`), judge poems
    instead: form, 平水韵 rhyme and 平仄 validity, distinct-1/2, and the copy rate against the
    training text.
    """
    from charlm.data import read_corpus
    from charlm.evaluate import evaluate, validation_text

    _need_stdout("the figures")
    if poems is not None or generate_n:
        _judge(checkpoint, poems, generate_n, form, acrostic, rhyme, rhyme_first, tones, novel, best_of, beam,
               temperature, top_k, top_p, seed, encoding, as_json)
        return
    try:
        ckpt = _load(checkpoint)
        if corpus is None:
            text, warnings = validation_text(ckpt)
            source = f"validation split of {ckpt.corpus.get('path')}"
        else:
            text, warnings, source = ckpt.vocab.normalize(read_corpus(corpus, encoding)), [], str(corpus)
        for w in warnings:
            _say("warning:", "yellow", w)
        result = evaluate(ckpt.model, ckpt.vocab, text, ckpt.counts)
        if as_json:
            print(_dumps({"checkpoint": str(ckpt.path), "corpus": source, **result.to_dict()}))
            return
    except CharLMError as e:
        _fail(str(e))
        return
    table = Table(title=_literal(f"{ckpt.path} on {source}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("loss (nats/char)", f"{result.loss:.4f}")
    table.add_row("bits per character", f"{result.bpc:.4f}")
    table.add_row("perplexity", f"{result.perplexity:.2f}")
    table.add_row("top-1 accuracy", f"{result.accuracy:.2%}")
    table.add_row("characters scored", f"{result.chars:,}")
    table.add_row("unknown characters", f"{result.unknown_chars:,}")
    if result.unknown_chars:
        table.add_row("bpc, known characters only", f"{result.known_bpc:.4f}")
    if result.unigram_bpc is not None:
        table.add_row("unigram baseline bpc", f"{result.unigram_bpc:.4f}")
    Console().print(table)


def _judge(checkpoint, poems_file, generate_n, form, acrostic, rhyme, rhyme_first, tones, novel, best_of, beam,
           temperature, top_k, top_p, seed, encoding, as_json) -> None:
    from charlm.data import read_corpus
    from charlm.judge import judge
    from charlm.sample import SampleSettings

    try:
        if poems_file is not None and generate_n:
            raise CharLMError("give either --poems FILE or --generate N, not both")
        if generate_n or checkpoint is not None:
            ckpt = _load(checkpoint)
        else:
            try:  # judging a file needs no model, only the training lines for the copy rate
                ckpt = _load(None)
            except CharLMError:
                ckpt = None
        parsed = None
        if generate_n:
            settings = SampleSettings(temperature=temperature, top_k=top_k, top_p=top_p)
            spec = _poem_spec(ckpt.vocab, form, acrostic, rhyme, rhyme_first, tones, novel)
            parsed = spec.form
            texts = [r.text for r in _sample(ckpt, "", generate_n, spec, settings, best_of, beam, seed)]
        else:
            if form:
                from charlm.poetry import parse_form

                parsed = parse_form(form)
            raw = read_corpus(poems_file, encoding, what="poems file")
            texts = [line.strip() for line in raw.split("\n") if line.strip()]
            if ckpt is not None:
                texts = [ckpt.vocab.normalize(t) for t in texts]
        reports, summary = judge(texts, parsed, ckpt.lines if ckpt is not None else None)
        if as_json:
            print(_dumps({"checkpoint": str(ckpt.path) if ckpt else None,
                          "poems": [r.__dict__ for r in reports], "summary": summary.to_dict()}))
            return
    except CharLMError as e:
        _fail(str(e))
        return
    out = Console()
    table = Table(title="poems")
    for col in ("#", "poem", "form", "rhyme", "tones", "copied lines", "longest copy"):
        table.add_column(col, overflow="fold", min_width=16 if col == "poem" else None)
    yes = lambda v: "–" if v is None else ("✓" if v else "✗")  # noqa: E731
    for i, r in enumerate(reports):
        tone = "–" if r.tone_agreement is None else f"{r.tone_agreement:.0%}"
        table.add_row(str(i + 1), _literal(r.text), f"{yes(r.form_valid)} {r.form or ''}", yes(r.rhyme_valid), tone,
                      f"{r.copied_lines}/{r.lines}", _literal(r.longest_copy))
    out.print(table)
    tot = Table(title="summary", show_header=False)
    pct = lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
    tot.add_row("poems", str(summary.poems))
    tot.add_row("form-valid", pct(summary.form_valid))
    tot.add_row("rhyme-valid (平水韵)", pct(summary.rhyme_valid))
    tot.add_row("tonal agreement (平仄)", pct(summary.tone_agreement))
    tot.add_row("tone-valid poems", pct(summary.tone_valid))
    tot.add_row("distinct-1 / distinct-2", f"{summary.distinct_1:.3f} / {summary.distinct_2:.3f}")
    tot.add_row("copy rate (lines)", pct(summary.copy_rate))
    tot.add_row("longest copied span", _literal(summary.longest_copy or "–"))
    out.print(tot)


def main() -> None:
    app()
