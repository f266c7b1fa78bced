"""The command line: parse options, call the library, render with rich.

No training maths, sampling or file formats here; errors from the library (CharLMError) become
one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import gc
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from charlm.config import (COMPOSE_CANDIDATES, DEFAULT_EPOCHS, DEVICE_HELP, MAX_COMPOSE_CANDIDATES, POOLINGS, SEED_MAX,
                           Config, ModelConfig, TrainConfig, parse_duration, parse_unk_alpha)
from charlm.errors import CharLMError
from charlm.config import SampleSettings
from charlm.vocab import is_unprintable, printable

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
    help="charlm: a character-level recurrent language model for classical Chinese poetry.",
)
err = Console(stderr=True, highlight=False)
_M, _T = ModelConfig(), TrainConfig()
_S = SampleSettings()

CheckpointOpt = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="Checkpoint directory. Default: the newest under ./checkpoints/, else the shipped model.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
EncodingOpt = Annotated[str, typer.Option("--encoding", help="Text encoding of the corpus file, e.g. gbk.")]
DeviceOpt = Annotated[str, typer.Option("--device", help=f"Where the model runs: {DEVICE_HELP}.")]
Int8Opt = Annotated[bool, typer.Option("--int8/--fp32", help=(
    "On a CPU, decode with dynamic int8 weights when there is enough work (8 rows or 100 steps or more): "
    "about 2x faster a step, validation bpc +0.004 on the shipped model. --fp32 decodes with the exact weights."))]


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


def _load(checkpoint_dir: Optional[Path], device: str = "cpu", lines: bool = True, task: str | None = "lm",
          genre: Optional[str] = None):
    """The checkpoint to use: --checkpoint, else the default for ``task`` (and ``genre``: the genre
    of the --form asked for, which may choose the shipped model), loaded; which one, and why, on
    stderr. A checkpoint of another task is refused with a sentence saying how to use it
    (``task=None`` takes any)."""
    from charlm import checkpoint
    from charlm.devices import resolve_device

    place = resolve_device(device)  # a bad --device is refused before anything is read
    path, why, warning = checkpoint.choose_checkpoint(checkpoint_dir, task or "lm", genre)
    ckpt = checkpoint.load(path, device=place, lines=lines)
    if task is not None and ckpt.config.task != task:
        if ckpt.config.task == "couplet":
            raise CharLMError(f"checkpoint {str(path)!r} is a couplet model: it answers a first line, "
                              f"given with --couplet 上联")
        raise CharLMError(f"checkpoint {str(path)!r} is a language model, not a couplet model; "
                          f"give a couplet checkpoint (charlm train --task couplet) or leave out --checkpoint")
    err.print(_literal(f"checkpoint: {path} ({why})", style="dim"), soft_wrap=True)
    if warning:
        _say("warning:", "yellow", warning)
    _settled()
    return ckpt


# -- train -------------------------------------------------------------------------------------

class _Display:
    """Rich live display for the trainer's callbacks. A terminal that goes away (closed stderr,
    a hung-up ssh session) silences the display; training goes on and saves as usual."""

    def __init__(self, progress: Progress, sample_seed: int, task: str = "lm") -> None:
        self.progress = progress
        self.task = task
        self.bar = progress.add_task("training", total=1000, stats="")
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
        if info.processes > 1:
            self._show(lambda: self.progress.console.print(Text(
                f"{info.processes} processes share the work: {info.batch_size // info.processes} rows each")))
        self._show(lambda: self.progress.console.print(Text(
            f"corpus {info.corpus_chars:,} characters: {info.train_poems:,} training / {info.valid_poems:,} "
            f"validation lines; vocabulary {info.vocab_size:,}; {info.parameters:,} parameters; "
            f"{info.precision}; batch {info.batch_size}{resumed}"), soft_wrap=True))

    def on_step(self, e) -> None:
        unit = "bits/poem" if self.task == "classify" else "bpc"  # a classifier's loss is one label a poem
        self._show(lambda: self.progress.update(
            self.bar, completed=min(1000, int(e.progress * 1000)), description=f"step {e.step}",
            stats=f"loss {e.loss:.2f} {unit} {e.bpc:.2f} {e.chars_per_sec / 1000:.1f}k char/s lr {e.lr:.0e}",
        ))

    def on_valid(self, e, model, vocab) -> None:
        import torch

        from charlm.sample import SampleSettings, generate

        if not self.alive:
            return
        if hasattr(e, "accuracy"):  # a classifier's validation (charlm.classify.ClassValidEvent)
            line = Text(f"step {e.step}: validation ({e.poems:,} poems) loss {e.valid_loss:.3f} accuracy ")
            line.append(f"{e.accuracy:.2%}", style="bold")
            if e.improved:
                line.append(" best", style="green")
            self._show(lambda: self.progress.console.print(line, soft_wrap=True))
            return
        g = torch.Generator().manual_seed(self.sample_seed)
        was_training = model.training
        try:
            if self.task == "couplet":
                from charlm.seq2seq import demo_answer

                sample = demo_answer(model, vocab, g)
            else:
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


TASKS = ("lm", "classify", "couplet")  # what `charlm train --task` builds

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
    "ema": "train.ema", "precision": "train.precision", "device": "train.device", "encoding": "train.encoding",
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
    corpus: Annotated[Path, typer.Argument(help="A UTF-8 text file; one poem (or paragraph) per line. With --task couplet, a pairs file: 上联<TAB>下联 a line, a blank line between poems.")],
    task: Annotated[str, typer.Option(help="lm: a language model of CORPUS; classify: a classifier of CORPUS's label<TAB>poem lines (charlm classify); couplet: the encoder–decoder that answers a couplet's first line (CORPUS: 上联<TAB>下联 lines).")] = TASKS[0],
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
    precision: Annotated[str, typer.Option(help="auto (bf16 where the device supports it, else fp16 on CUDA, fp32 elsewhere), bf16, fp16 (CUDA) or fp32.")] = _T.precision,
    device: Annotated[str, typer.Option(help=f"Where to train: {DEVICE_HELP}.")] = _T.device,
    encoding: EncodingOpt = _T.encoding,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch (default: torch's choice).", min=1)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out with its saved settings; a new --max-steps, --max-time or --epochs replaces its budget.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start afresh even if --out holds another run, replacing it.")] = False,
    tensorboard: Annotated[Optional[Path], typer.Option(help="Also write the training and validation curves into this folder for TensorBoard (pip install 'charlm[tensorboard]').")] = None,
    init_from: Annotated[Optional[Path], typer.Option(help="--task classify: start the encoder from this language model's checkpoint (its vocabulary and model settings are used).")] = None,
    pooling: Annotated[str, typer.Option(help=f"--task classify: what the label is read from: {' or '.join(POOLINGS)} (the final state, or the mean of the states).")] = POOLINGS[0],
) -> None:
    """Train a character-level LSTM on CORPUS; the best checkpoint by validation bpc goes to --out.

    The resume state is saved at every validation and every --save-every minutes: after a crash,
    a kill or Ctrl-C, `charlm train CORPUS --out DIR --resume` continues where it was saved.
    """
    from charlm.encoded import Source
    from charlm.train import MultiCallbacks, train_corpus

    _settled()  # a run of hours collects as usual
    board = None
    try:
        if resume and overwrite:
            raise CharLMError("give either --resume or --overwrite, not both")
        if task not in TASKS:
            raise CharLMError(f"--task must be one of {', '.join(TASKS)}, not {task!r}")
        if task == "lm" and (init_from is not None or ctx.get_parameter_source("pooling").name != "DEFAULT"):
            raise CharLMError(f"{'--init-from' if init_from is not None else '--pooling'} needs --task classify")
        model_flags = [flag for name, flag in _given_options(ctx).items() if name.startswith("model.")]
        if init_from is not None and model_flags:
            raise CharLMError(f"{model_flags[0]} cannot be given with --init-from: the model's settings are "
                              f"those of the language model it starts from")
        config = Config(
            ModelConfig(embed_dim=embed, hidden_size=hidden, num_layers=layers, dropout=dropout, tie_weights=tie,
                        cell=cell, conv_kernel=conv_kernel, residual=residual, embed_dropout=embed_dropout,
                        locked_dropout=locked_dropout, softmax=softmax),
            TrainConfig(
                seq_len=seq_len, batch_size=batch_size, lr=lr, weight_decay=weight_decay, clip=clip,
                warmup_steps=warmup, max_steps=max_steps, epochs=epochs, seed=seed,
                max_time=parse_duration(max_time) if max_time else None, valid_fraction=valid_fraction,
                min_count=min_count, eval_interval=eval_interval, valid_chars=valid_chars, save_every=save_every,
                precision=precision, device=device,
                encoding=encoding, ema=ema, unk_alpha=parse_unk_alpha(unk_alpha),
            ),
            task="couplet" if task == "couplet" else "lm",  # a classifier is marked by its own config section
        )
        if tensorboard is not None:
            from charlm.tensorboard_log import TensorBoardLog

            board = TensorBoardLog(tensorboard)
        if threads:
            import torch

            torch.set_num_threads(threads)
        out_dir = out or Path("checkpoints") / corpus.stem
        columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=12), TaskProgressColumn(),
                   TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(compact=True)]
        display = _Display(Progress(*columns, console=err, transient=False), seed, task)
        if task == "classify":
            from charlm.classify import train_labelled

            try:
                result = train_labelled(corpus, config, out_dir, pooling=pooling, init_from=init_from,
                                        callbacks=MultiCallbacks(display, board) if board else display,
                                        resume=resume, overwrite=overwrite,
                                        changed=_given_options(ctx) if resume else None)
            finally:
                display.close()
                if board is not None:
                    board.close()
            return _classify_summary(result, corpus)
        try:
            if task == "couplet":
                from charlm.seq2seq import train_pairs

                result = train_pairs(corpus, config, out_dir, callbacks=MultiCallbacks(display, board) if board
                                     else display, resume=resume, overwrite=overwrite,
                                     changed=_given_options(ctx) if resume else None)
            else:
                result = train_corpus(Source(corpus, encoding), config, out_dir, corpus_path=str(corpus),
                                      callbacks=MultiCallbacks(display, board) if board else display, resume=resume,
                                      overwrite=overwrite, changed=_given_options(ctx) if resume else None)
        finally:
            display.close()
            if board is not None:
                board.close()
    except CharLMError as e:
        _fail(str(e))
        return
    except OSError as e:  # a file system failure the library did not foresee: still one sentence
        _fail(f"training stopped: {e.strerror or e}" + (f" ({e.filename})" if e.filename else "")
              + "; the last complete checkpoint and resume state are kept")
        return
    if os.environ.get("RANK", "0") != "0":  # under torchrun, process 0 alone reports
        raise typer.Exit(_exit_code(result.interrupted))
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
    _stopped(result, corpus, task)


def _classify_summary(result, corpus: Path) -> None:
    table = Table(title="training summary (classifier)", show_header=False)
    table.add_row("checkpoint", _literal(result.out))
    table.add_row("steps", f"{result.steps:,} ({result.epochs_done:.2f} epochs)")
    table.add_row("time", f"{result.elapsed:.0f} s")
    table.add_row("last training loss (nats/poem)", f"{result.last_train_loss:.3f}")
    if result.best_accuracy is not None:
        table.add_row("best validation (subset): loss, accuracy", f"{result.best_valid_loss:.3f}, {result.best_accuracy:.2%}")
    if result.full is not None:
        table.add_row(f"accuracy of the best (full split, {result.full.poems:,} poems)", f"{result.full.accuracy:.2%}")
    if result.skipped:
        table.add_row("updates skipped (not finite)", f"{result.skipped:,}")
    _report(table)
    _stopped(result, corpus, "classify")


def _exit_code(interrupted: str | None) -> int:
    """A run stopped by SIGINT exits 130, by SIGTERM or SIGHUP 143 (as a shell reports them), else 0."""
    return 130 if interrupted == "SIGINT" else 143 if interrupted else 0


def _stopped(result, corpus: Path, task: str) -> None:
    """For an interrupted run: the command that continues it, shell-quoted so it works as printed
    (with its --task, without which a classifier or couplet run is refused), and the signal's exit."""
    if not result.interrupted:
        return
    task_flag = f" --task {task}" if task != TASKS[0] else ""
    hint = f"charlm train{task_flag} {shlex.quote(str(corpus))} --out {shlex.quote(str(result.out))} --resume"
    _report(Text.assemble(f"stopped by {result.interrupted}; continue with: ", _literal(hint)))
    raise typer.Exit(_exit_code(result.interrupted))


def _report(renderable) -> None:
    """Print to stderr; a closed stderr (a terminal gone) is no reason to fail a finished run."""
    try:
        err.print(renderable, soft_wrap=True)
    except (OSError, ValueError):
        pass


# -- generate ----------------------------------------------------------------------------------

FormOpt = Annotated[Optional[str], typer.Option(
    help="Poem form: 五绝, 七绝, 五律, 七律 (or wujue, qijue, wulv, qilv), or a ci tune by its Chinese name "
         "(浣溪沙, 水调歌头, …; `charlm generate --list-forms` lists them): exact lines, characters and marks.")]
AcrosticOpt = Annotated[Optional[str], typer.Option(help="藏头诗: line i starts with the i-th character.")]
RhymeOpt = Annotated[bool, typer.Option("--rhyme", help=(
    "Rhyme (needs --form): a regulated poem's even lines end in one 平水韵 level-tone group; a tune's "
    "rhyme lines end in one 词林正韵 part each rhyme set, on the tone (平 or 仄) the tune rhymes on."))]
RhymeFirstOpt = Annotated[bool, typer.Option("--rhyme-first", help="The first line rhymes too (with --rhyme).")]
TonesOpt = Annotated[bool, typer.Option("--tones", help=(
    "Follow the 平仄 pattern (needs --form): regulated verse's, or the tune's learned tones (中 = either)."))]
NovelOpt = Annotated[bool, typer.Option("--novel", help="No line may copy a line of the training text verbatim.")]
BestOfOpt = Annotated[int, typer.Option("--best-of", help="Sample K candidates per poem, keep the likeliest per character.", min=1)]
BeamOpt = Annotated[int, typer.Option("--beam", help="Beam search of this width instead of sampling (needs --form).", min=0)]
TemperatureOpt = Annotated[float, typer.Option(help=(
    "Sampling temperature, a finite number > 0; lower is safer. Scores are scaled as (logit − best) / T, "
    "so a tiny T such as 1e-9 always takes the likeliest character (greedy) and a huge one samples uniformly."))]
TopKOpt = Annotated[int, typer.Option(help="Sample among the k likeliest characters (0 = off).")]
TopPOpt = Annotated[float, typer.Option(help="Nucleus sampling: smallest set with this probability mass, in (0, 1].")]
NoRepeatOpt = Annotated[Optional[bool], typer.Option(
    "--no-repeat/--repeat", help="No repeated character bigram in a poem and at most 2 uses of one character "
    "(97% of real quatrains keep both). Default: on for --beam, off for sampling.", show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option(
    help="Seed for reproducible samples, 0 … 2**63 − 1.", min=0, max=SEED_MAX)]


def _form(form: Optional[str]):
    """The --form asked for, regulated or a tune (charlm.cipai.find_form), or None."""
    from charlm.cipai import find_form

    return find_form(form) if form else None


def _poem_spec(vocab, parsed, acrostic, rhyme, rhyme_first, tones, novel):
    from charlm.constrain import PoemSpec

    return PoemSpec(form=parsed, acrostic=vocab.normalize(acrostic or ""), rhyme=rhyme,
                    rhyme_first=rhyme_first, tones=tones, novel=novel)


def _sample(ckpt, prompt, n, spec, settings, best_of, beam, seed, no_repeat=None, on_char=None, int8=True):
    """charlm.sample.write_poems on the loaded checkpoint, its warnings on stderr."""
    from charlm.sample import write_poems

    return write_poems(ckpt.model, ckpt.vocab, prompt, n, spec=spec, settings=settings, best_of=best_of, beam=beam,
                       no_repeat=no_repeat, seed=seed, lines=ckpt.lines, on_char=on_char,
                       on_warning=lambda w: _say("warning:", "yellow", w), quantize=int8)


def _panel(result, checks, index):
    """A poem in a panel: one line per verse line, centred, with its score and checks below."""
    from rich.align import Align
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    from charlm.poetry import lines_with_marks

    lines = lines_with_marks(result.text)
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
    temperature: TemperatureOpt = _S.temperature,
    top_k: TopKOpt = _S.top_k,
    top_p: TopPOpt = _S.top_p,
    max_chars: Annotated[Optional[int], typer.Option(help=(
        f"Stop a poem after this many new characters (at least 1; default {_S.max_chars}). Not with --form, "
        "whose poems have a fixed length."), show_default=False)] = None,
    seed: SeedOpt = None,
    form: FormOpt = None,
    acrostic: AcrosticOpt = None,
    rhyme: RhymeOpt = False,
    rhyme_first: RhymeFirstOpt = False,
    tones: TonesOpt = False,
    novel: NovelOpt = False,
    best_of: BestOfOpt = 1,
    beam: BeamOpt = 0,
    no_repeat: NoRepeatOpt = None,
    device: DeviceOpt = "auto",
    int8: Int8Opt = True,
    as_json: JsonOpt = False,
    list_forms: Annotated[bool, typer.Option("--list-forms", help=(
        "List every --form instead: the regulated ones and each tune, with its lines, line lengths and "
        "the corpus ci it was learned from."))] = False,
    couplet: Annotated[Optional[str], typer.Option(help=(
        "Answer this first line of a couplet (上联) with a couplet model (default: the shipped one): lines of "
        "the same length, the last tone opposite, no character of the first line reused."), show_default=False)] = None,
) -> None:
    """Write poems that continue --prompt; each stops at the end of the poem or --max-chars.

    With --couplet 上联, answer that first line instead: -n answers (by --beam K, or sampled), one a line.

    A single poem streams to the terminal as it is written. With --form, --acrostic, --best-of or
    --beam on a terminal, each poem is shown in a panel with its score (mean log-probability per
    character); piped, stdout holds one poem per line. A tune (--form 浣溪沙) is written by the
    shipped ci model when it is installed, else by the default model, with a warning.
    """
    from charlm.judge import poem_checks
    from charlm.sample import SampleSettings

    _need_stdout("the forms" if list_forms else "the poems")
    if list_forms:
        _list_forms(as_json)
        return
    if couplet is not None:
        given = {"--prompt": prompt, "--form": form, "--acrostic": acrostic, "--rhyme": rhyme,
                 "--rhyme-first": rhyme_first, "--tones": tones, "--novel": novel, "--max-chars": max_chars,
                 "--best-of": best_of > 1, "--no-repeat/--repeat": no_repeat is not None}
        _answer_couplet(checkpoint, couplet, n, beam, seed, device, as_json, temperature, top_k, top_p,
                        next((flag for flag, value in given.items() if value), None))
        return
    fancy = bool(form or acrostic or best_of > 1 or beam) and sys.stdout.isatty() and not as_json
    stream = n == 1 and best_of == 1 and not beam and not as_json and not fancy

    started = False

    def emit(ch: str) -> None:
        nonlocal started
        if not started:  # the prompt goes out with the first new character, once nothing can fail
            started = True
            from charlm.sample import prepare_prompt

            sys.stdout.write(printable(prepare_prompt(ckpt.vocab, prompt)))
        sys.stdout.write(printable(ch))
        sys.stdout.flush()

    try:
        settings = SampleSettings(temperature=temperature, top_k=top_k, top_p=top_p,
                                  max_chars=_S.max_chars if max_chars is None else max_chars)
        parsed = _form(form)
        ckpt = _load(checkpoint, device, lines=novel, genre=parsed.genre if parsed else None)  # lines: for --novel only
        spec = _poem_spec(ckpt.vocab, parsed, acrostic, rhyme, rhyme_first, tones, novel)
        if spec.form is not None and max_chars is not None:
            raise CharLMError("--max-chars does not apply with --form, whose poems have a fixed length; give one of them")
        results = _sample(ckpt, prompt, n, spec, settings, best_of, beam, seed, no_repeat, int8=int8,
                          on_char=emit if stream else None)
        if stream:
            sys.stdout.write(("" if started else printable(results[0].text)) + "\n")
        elif as_json:
            poems = [{"text": r.text, "logprob": r.logprob, "score": r.score, "pattern": r.pattern,
                      "checks": poem_checks(r.text, spec.form)} for r in results]
            print(_dumps({"checkpoint": str(ckpt.path), "samples": [r.text for r in results], "poems": poems}))
        elif fancy:
            out = Console()
            for i, r in enumerate(results):
                out.print(_panel(r, poem_checks(r.text, spec.form), i))
        else:
            for r in results:
                _print_line(r.text)
    except CharLMError as e:
        _fail(str(e))
    except BrokenPipeError:  # e.g. `charlm generate -n 9 | head -1`
        sys.stderr.close()
        raise typer.Exit(0)


def _list_forms(as_json: bool) -> None:
    from charlm.cipai import all_forms

    try:
        forms = all_forms()
    except CharLMError as e:
        _fail(str(e))
        return
    if as_json:
        print(_dumps({"forms": [{"name": f.name, "genre": f.genre, "lines": f.lines, "lengths": list(f.lengths),
                                 "marks": f.marks, "examples": f.examples} for f in forms]}))
        return
    table = Table(title="forms (--form NAME)")
    for col, justify in (("form", "left"), ("genre", "left"), ("lines", "right"), ("line lengths", "left"),
                         ("corpus ci", "right")):
        table.add_column(col, justify=justify, overflow="fold")
    for f in forms:
        table.add_row(_literal(f.name), f.genre, str(f.lines), " ".join(map(str, f.lengths)),
                      f"{f.examples:,}" if f.examples else "–")
    Console().print(table)


def _answer_couplet(checkpoint, first, n, beam, seed, device, as_json, temperature, top_k, top_p, stray) -> None:
    """charlm generate --couplet: answers to a first line, one a line, or JSON."""
    from charlm.sample import SampleSettings
    from charlm.seq2seq import answer, check_first_line, checks

    try:
        if stray:
            raise CharLMError(f"--couplet answers one first line and does not take {stray}")
        check_first_line(first.strip())  # before any model is loaded
        settings = SampleSettings(temperature=temperature, top_k=top_k, top_p=top_p)
        ckpt = _load(checkpoint, device, lines=False, task="couplet")
        results = answer(ckpt.model, ckpt.vocab, first, n, beam=beam, settings=settings, seed=seed)
        if as_json:
            line = ckpt.vocab.normalize(first.strip())
            poems = [{"text": r.text, "logprob": r.logprob, "score": r.score, "checks": checks(line, r.text)}
                     for r in results]
            print(_dumps({"checkpoint": str(ckpt.path), "couplet": line, "samples": [r.text for r in results],
                          "poems": poems}))
        else:
            for r in results:
                _print_line(r.text)
    except CharLMError as e:
        _fail(str(e))
    except BrokenPipeError:
        sys.stderr.close()
        raise typer.Exit(0)


# -- compose -----------------------------------------------------------------------------------

class _Answers:
    """The user's answers: rich prompts on a terminal; piped, one line of stdin per answer, echoed
    after the prompt so the transcript reads like a session. None when the input has ended."""

    def __init__(self) -> None:
        self.tty = sys.stdin is not None and sys.stdin.isatty()

    def __call__(self, prompt: str) -> Optional[str]:
        from rich.prompt import Prompt

        if self.tty:
            try:
                return Prompt.ask(Text(prompt), console=err)
            except EOFError:
                return None
        line = sys.stdin.readline() if sys.stdin is not None else ""
        if not line:
            return None
        line = line.rstrip("\r\n")
        err.print(Text.assemble(prompt, ": ", _literal(line, "bold")), soft_wrap=True)
        return line


def _show_candidates(composer, candidates) -> None:
    i = composer.line_index
    err.print(Text.assemble((f"\nline {i + 1} of {composer.form.lines}", "bold"), " (",
                            _literal(", ".join(composer.rules())), ")"), soft_wrap=True)
    if composer.relaxed:
        _say("note:", "cyan", f"an earlier line breaks the rules, so these are decoded without {' and '.join(composer.relaxed)}")
    if not candidates:
        _say("note:", "cyan", "the model has no new line here; type your own, or b to go back")
    for n, c in enumerate(candidates, 1):
        rhyme = {True: "韵", False: "✗韵", None: ""}[c.rhymes]
        row = Text.assemble(f"{n:>3}  ", _literal(c.text, "bold"), "  ", (c.marks, "cyan"), f"  {rhyme:<3}",
                            (f"{c.score:6.2f}", "dim"))
        err.print(row, soft_wrap=True)
        for p in c.problems:
            err.print(Text.assemble("       ", _literal(p, "yellow")), soft_wrap=True)


def _show_poem(composer) -> None:
    from charlm.compose import tone_marks

    c = composer.checks()
    err.print()
    if composer.title:
        err.print(_literal(composer.title, "bold"), soft_wrap=True)
    for i, line in enumerate(composer.lines):
        err.print(Text.assemble("  ", _literal(line + composer.marks[i]), "  ", (tone_marks(line, composer.table), "cyan")),
                  soft_wrap=True)
    yes = lambda v: "–" if v is None else ("✓" if v else "✗")  # noqa: E731
    bits = [f"form {yes(c.form_valid)} {c.form}", f"rhyme {yes(c.rhyme_valid)} {c.rhyme_group or ''}".rstrip(),
            "tones " + ("–" if c.tone_agreement is None else f"{c.tone_agreement:.0%}") + (f" {c.pattern}" if c.pattern else "")]
    err.print(_literal(" · ".join(bits), "dim"), soft_wrap=True)
    for p in c.problems:
        _say("warning:", "yellow", p)


def _compose_session(composer, k: int, first_line: Optional[str], ask) -> str:
    """Run the choices until the poem is complete ("done"), the user quits ("quit") or the input
    ends ("eof")."""
    pending = first_line
    shown = None
    while not composer.done:
        if pending is None:
            if shown is None:
                shown = composer.candidates(k)
                _show_candidates(composer, shown)
            answer = ask(f"1-{len(shown)} pick, m more, b back, q quit, or type a line" if shown
                         else "m more, b back, q quit, or type a line")
            if answer is None:
                return "eof"
        else:
            answer, pending = pending, None
        choice = answer.strip()
        if not choice:
            _say("note:", "cyan", "nothing typed; give a number, m, b, q or a line of your own")
            continue
        if choice.lower() == "q":
            return "quit"
        if choice.lower() == "m":
            more = composer.candidates(k)
            if more:
                shown = more
            _show_candidates(composer, more)
            continue
        if choice.lower() == "b":
            try:
                gone = composer.back()
            except CharLMError as e:
                _say("note:", "cyan", str(e))
                continue
            _say("back:", "cyan", f"removed {gone}")
            shown = None
            continue
        if choice.isdigit():
            n = int(choice)
            if shown and 1 <= n <= len(shown):
                composer.accept(shown[n - 1].text)
                shown = None
            else:
                _say("note:", "cyan", f"there is no candidate {choice}" + (f"; choose 1 to {len(shown)}" if shown else ""))
            continue
        try:
            problems = composer.check(choice)
        except CharLMError as e:
            _say("note:", "cyan", str(e))
            continue
        if problems:
            for p in problems:
                _say("warning:", "yellow", p)
            confirm = ask("keep it anyway? y/n")
            if confirm is None:
                return "eof"
            if confirm.strip().lower() not in ("y", "yes"):
                continue
        composer.accept(choice)
        shown = None
    return "done"


@app.command()
def compose(
    form: Annotated[str, typer.Option(help="Poem form: 五绝, 七绝, 五律, 七律 (or wujue, qijue, wulv, qilv), or a tune "
                                           "such as 浣溪沙 (charlm generate --list-forms), written by the ci model.")],
    checkpoint: CheckpointOpt = None,
    title: Annotated[str, typer.Option(help="A title, shown and saved with the poem (the model does not read it).")] = "",
    acrostic: AcrosticOpt = None,
    rhyme: Annotated[bool, typer.Option("--rhyme/--no-rhyme", help="The rhyme lines rhyme: in one 平水韵 level-tone group "
                                        "(regulated verse), in 词林正韵 parts on the tune's tones (a tune).")] = True,
    rhyme_group: Annotated[Optional[str], typer.Option(help="The rhyme group to use, regulated forms only: 下平七阳, 七阳 or 阳.")] = None,
    rhyme_first: RhymeFirstOpt = False,
    tones: Annotated[bool, typer.Option("--tones/--no-tones", help="Candidates follow, and your lines are checked against, the 平仄 pattern.")] = False,
    first_line: Annotated[Optional[str], typer.Option(help="The first line, checked as if you had typed it.")] = None,
    k: Annotated[int, typer.Option("-k", "--candidates", help="Candidate lines shown at a time.", min=1,
                                   max=MAX_COMPOSE_CANDIDATES)] = COMPOSE_CANDIDATES,
    seed: SeedOpt = None,
    save: Annotated[Optional[Path], typer.Option(help="Save the finished poem to this new file: JSON with --json, else text.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Let --save replace an existing file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print (and save) the finished poem as one JSON object.")] = False,
    device: DeviceOpt = "auto",
) -> None:
    """Write a poem line by line with the model: pick a candidate, ask for more, type your own line, or go back.

    At each line the model's candidates are listed best first with their 平仄 (○ 平, ● 仄, ◐ either,
    ? unknown) and whether they rhyme. Answer 1…K to pick one, m for more, b to go back a line,
    q to quit, or type a line of your own: it is checked against the form, the acrostic, the rhyme
    and (with --tones) the 平仄 pattern, and you may keep it anyway. Piped, one answer is read per
    line of stdin. The finished poem goes to stdout (its title, if any, on the line before); the
    session, on stderr. Quitting saves nothing; input that ends before the poem does exits with 1.
    """
    from charlm.compose import ComposeSpec, Composer, check_save_target
    from charlm.compose import save as save_poem

    _need_stdout("the poem")
    try:
        if save is not None:
            check_save_target(save, overwrite)
        parsed = _form(form)
        ckpt = _load(checkpoint, device, genre=parsed.genre)  # a tune: the shipped ci model by default
        composer = Composer(ckpt, ComposeSpec(form=form, title=title, acrostic=acrostic or "", rhyme=rhyme,
                                              rhyme_group=rhyme_group, rhyme_first=rhyme_first, tones=tones),
                            seed=seed)
        outcome = _compose_session(composer, k, first_line, _Answers())
    except CharLMError as e:
        _fail(str(e))
        return
    except KeyboardInterrupt:
        _say("stopped:", "cyan", "nothing saved")
        raise typer.Exit(130)
    if outcome != "done":
        where = f"at line {composer.line_index + 1} of {composer.form.lines}"
        if outcome == "quit":
            _say("stopped:", "cyan", f"{where}; nothing saved")
            return
        _fail(f"the input ended {where}, before the poem was complete; nothing saved")
    _show_poem(composer)
    if as_json:
        print(_dumps(composer.to_dict()), flush=True)
    else:
        for line in composer.to_text().splitlines():
            _print_line(line)
    if save is not None:
        try:
            save_poem(save, composer.to_json() if as_json else composer.to_text(), overwrite)
        except CharLMError as e:
            _fail(str(e))
        _say("saved:", "green", str(save))


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
    temperature: TemperatureOpt = _S.temperature,
    top_k: TopKOpt = _S.top_k,
    top_p: TopPOpt = _S.top_p,
    seed: SeedOpt = None,
    no_repeat: NoRepeatOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Report loss, bits per character, perplexity and accuracy on held-out text.

    With --poems FILE, or --generate N (sampling options as in `charlm generate`), judge poems
    instead: form, rhyme (平水韵; 词林正韵 for a tune) and 平仄 validity, distinct-1/2, and the copy rate against the
    training text.

    A couplet checkpoint (charlm train --task couplet) reports the bpc of the second lines given
    the first, and the share of answers whose tones oppose the first line's at the 2nd, 4th, 6th
    and last characters, beside the same share for the real second lines (--generate N: how many
    first lines are answered; --beam K: answered by beam search instead of sampling).
    """
    from charlm.data import read_corpus
    from charlm.evaluate import evaluate, validation_text

    _need_stdout("the figures")
    if poems is None and not generate_n and checkpoint is not None and _is_classifier(checkpoint):
        _eval_classifier(checkpoint, corpus, encoding, device, as_json)
        return
    if checkpoint is not None and _task_of(checkpoint) == "couplet":
        stray = next((flag for flag, value in {"--poems": poems, "--form": form, "--acrostic": acrostic,
                                               "--rhyme": rhyme, "--rhyme-first": rhyme_first, "--tones": tones,
                                               "--novel": novel, "--best-of": best_of > 1}.items() if value), None)
        _eval_couplet(checkpoint, corpus, generate_n, beam, temperature, top_k, top_p, seed, device, as_json, stray)
        return
    if poems is not None or generate_n:
        _judge(checkpoint, device, poems, generate_n, form, acrostic, rhyme, rhyme_first, tones, novel, best_of, beam,
               temperature, top_k, top_p, seed, no_repeat, encoding, as_json)
        return
    try:
        ckpt = _load(checkpoint, device, lines=False)  # scoring needs no training lines
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
    rows = [("loss (nats/char)", f"{result.loss:.4f}"), ("bits per character", f"{result.bpc:.4f}"),
            ("perplexity", f"{result.perplexity:.2f}"), ("top-1 accuracy", f"{result.accuracy:.2%}"),
            ("characters scored", f"{result.chars:,}"), ("unknown characters", f"{result.unknown_chars:,}")]
    if result.unknown_chars:
        rows.append(("bpc, known characters only", f"{result.known_bpc:.4f}"))
    if result.unigram_bpc is not None:
        rows.append(("unigram baseline bpc", f"{result.unigram_bpc:.4f}"))
    _print_metrics(f"{ckpt.path} on {source}", rows)


def _print_metrics(title: str, rows: list[tuple[str, str]]) -> None:
    """eval's figures as a two-column table (the title names a path: printed literally)."""
    table = Table(title=_literal(title))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def _task_of(path: Path) -> str:
    """The task --checkpoint names (lm for one that cannot be read: loading it says why)."""
    from charlm import checkpoint

    try:
        return checkpoint.task_of(checkpoint.read_config(path)[1])
    except (CharLMError, OSError):
        return checkpoint.TASK_LM


def _eval_couplet(checkpoint, corpus, generate_n, beam, temperature, top_k, top_p, seed, device, as_json,
                  stray) -> None:
    from charlm.sample import SampleSettings
    from charlm.seq2seq import DEFAULT_EVAL_ANSWERS, evaluate_pairs, validation_pairs

    try:
        if stray:
            raise CharLMError(f"a couplet checkpoint is evaluated on pairs; {stray} is for language models")
        settings = SampleSettings(temperature=temperature, top_k=top_k, top_p=top_p)
        ckpt = _load(checkpoint, device, lines=False, task="couplet")
        pairs, source, warnings = validation_pairs(ckpt, corpus)
        for w in warnings:
            _say("warning:", "yellow", w)
        result = evaluate_pairs(ckpt.model, ckpt.vocab, pairs, answers=generate_n or DEFAULT_EVAL_ANSWERS,
                                settings=settings, beam=beam, seed=seed or 0)
        if as_json:
            print(_dumps({"checkpoint": str(ckpt.path), "corpus": source, **result.to_dict()}))
            return
    except CharLMError as e:
        _fail(str(e))
        return
    pct = lambda v, n: "–" if v is None else f"{v:.1%} of {n:,}"  # noqa: E731
    _print_metrics(f"{ckpt.path} on {source}", [
        ("pairs", f"{result.pairs:,}"),
        ("second-line characters scored", f"{result.chars:,}"),
        ("bits per character, second line given the first", f"{result.bpc:.4f}"),
        ("perplexity", f"{result.perplexity:.2f}"),
        ("top-1 accuracy", f"{result.accuracy:.2%}"),
        ("unknown characters", f"{result.unknown_chars:,}"),
        (f"tones opposed (2nd, 4th, 6th, last): model's answers to {result.answered:,} first lines",
         pct(result.tones_generated, result.tones_generated_judged)),
        ("tones opposed: the real second lines", pct(result.tones_real, result.tones_real_judged))])


def _judge(checkpoint, device, poems_file, generate_n, form, acrostic, rhyme, rhyme_first, tones, novel, best_of, beam,
           temperature, top_k, top_p, seed, no_repeat, encoding, as_json) -> None:
    from charlm.data import read_corpus
    from charlm.judge import judge
    from charlm.sample import SampleSettings

    try:
        if poems_file is not None and generate_n:
            raise CharLMError("give either --poems FILE or --generate N, not both")
        parsed = _form(form)
        if generate_n or checkpoint is not None:
            ckpt = _load(checkpoint, device, genre=parsed.genre if parsed and generate_n else None)
        else:
            try:  # judging a file needs no model, only the training lines for the copy rate
                ckpt = _load(None, device)
            except CharLMError:
                ckpt = None
        if generate_n:
            settings = SampleSettings(temperature=temperature, top_k=top_k, top_p=top_p)
            spec = _poem_spec(ckpt.vocab, parsed, acrostic, rhyme, rhyme_first, tones, novel)
            texts = [r.text for r in _sample(ckpt, "", generate_n, spec, settings, best_of, beam, seed, no_repeat)]
        else:
            raw = read_corpus(poems_file, encoding, what="poems file")
            texts = [line.strip() for line in raw.split("\n") if line.strip()]
            if ckpt is not None:
                texts = [ckpt.vocab.normalize(t) for t in texts]
        reports, summary = judge(texts, parsed, ckpt.lines if ckpt is not None else None)
        corpus_rep = _corpus_repetition(ckpt)
        if as_json:
            print(_dumps({"checkpoint": str(ckpt.path) if ckpt else None,
                          "poems": [r.__dict__ for r in reports], "summary": summary.to_dict(),
                          "corpus_repetition": corpus_rep.__dict__ if corpus_rep else None}))
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
    tot.add_row(f"rhyme-valid ({parsed.rhyme_scheme if parsed else '平水韵'})", pct(summary.rhyme_valid))
    tot.add_row("tonal agreement (平仄)", pct(summary.tone_agreement))
    tot.add_row("tone-valid poems", pct(summary.tone_valid))
    tot.add_row("distinct-1 / distinct-2", f"{summary.distinct_1:.3f} / {summary.distinct_2:.3f}")
    tot.add_row("copy rate (lines)", pct(summary.copy_rate))
    beside = (lambda v, f: f"{f(v)}  (corpus: {f(getattr(corpus_rep, k))})") if corpus_rep else (lambda v, f: f(v))  # noqa: E731
    k = "repeated_bigram"
    tot.add_row("poems repeating a bigram", beside(summary.repeated_bigram, pct))
    k = "top_char_count"
    tot.add_row("most frequent character, mean count", beside(summary.top_char_count, lambda v: f"{v:.2f}"))
    k = "top_char_4"
    tot.add_row("poems using a character 4+ times", beside(summary.top_char_4, pct))
    tot.add_row("longest copied span", _literal(summary.longest_copy or "–"))
    out.print(tot)


def _corpus_repetition(ckpt):
    """The repetition figures of the checkpoint's training corpus, when its file is still there."""
    from charlm.data import read_corpus
    from charlm.judge import repetition_of

    path = (ckpt.corpus or {}).get("path") if ckpt is not None else None
    if not path or not Path(path).is_file():
        return None
    try:
        return repetition_of([l for l in read_corpus(Path(path)).split("\n") if l.strip()])
    except CharLMError:
        return None


# -- classify ----------------------------------------------------------------------------------

def _is_classifier(path: Path) -> bool:
    """Whether --checkpoint names a classifier (anything unreadable is left for loading to explain)."""
    from charlm import checkpoint

    try:
        return checkpoint.task_of(checkpoint.read_config(path)[1]) == checkpoint.TASK_CLASSIFY
    except (CharLMError, OSError):
        return False


def _load_classifier(checkpoint_dir: Optional[Path], device: str):
    from charlm import checkpoint
    from charlm.devices import resolve_device

    place = resolve_device(device)
    path, why = checkpoint.find_default(checkpoint_dir, checkpoint.TASK_CLASSIFY)
    ckpt = checkpoint.load_classifier(path, device=place)
    err.print(_literal(f"checkpoint: {path} ({why})", style="dim"), soft_wrap=True)
    _settled()
    return ckpt


def _probs(probs: dict[str, float]) -> str:
    return " ".join(f"{printable(label)}={p:.3f}" for label, p in probs.items())


@app.command("classify")
def classify_(
    text: Annotated[Optional[str], typer.Argument(help="A poem to classify.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", help="Classify every poem of this file, one a line (blank lines skipped).")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(
        "--checkpoint", help="A classifier's checkpoint. Default: the newest classifier under ./checkpoints/, else the shipped one (tang-or-song).")] = None,
    encoding: EncodingOpt = "utf-8",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Label a poem with a classifier (sequence to class): print the label and every label's probability.

    One line a poem on stdout: the label, a tab, then label=probability for every label. With
    --json, one object: {"checkpoint": …, "results": [{"text", "label", "probs"}, …]}.
    """
    from charlm.classify import classify
    from charlm.data import read_corpus

    _need_stdout("the labels")
    try:
        if (text is None) == (file is None):
            raise CharLMError("give either a TEXT to classify or --file FILE, not both" if text is not None
                              else "give a TEXT to classify or --file FILE with a poem on a line")
        if file is not None:
            texts = [line.strip() for line in read_corpus(file, encoding, what="poems file").split("\n") if line.strip()]
        else:
            texts = [text.strip()] if text.strip() else []
        ckpt = _load_classifier(checkpoint, device)
        unknown = {c: None for t in texts for c in ckpt.vocab.unknown(ckpt.vocab.normalize(t))}
        if unknown:
            _say("warning:", "yellow", f"not in the classifier's vocabulary, read as <unk>: {''.join(unknown)}")
        results = classify(ckpt, texts)
        if as_json:
            print(_dumps({"checkpoint": str(ckpt.path),
                          "results": [{"text": r.text, "label": r.label, "probs": r.probs} for r in results]}))
            return
    except CharLMError as e:
        _fail(str(e))
        return
    for r in results:
        print(f"{printable(r.label)}\t{_probs(r.probs)}", flush=True)


def _eval_classifier(checkpoint_dir: Path, corpus: Optional[Path], encoding: str, device: str, as_json: bool) -> None:
    from charlm.classify import evaluate

    try:
        ckpt = _load_classifier(checkpoint_dir, device)
        result = evaluate(ckpt, corpus, encoding)
        for w in result.warnings:
            _say("warning:", "yellow", w)
        if as_json:
            print(_dumps({"checkpoint": str(ckpt.path), **result.to_dict()}))
            return
    except CharLMError as e:
        _fail(str(e))
        return
    out = Console()
    for name, r in (("classifier", result.model), ("naive Bayes baseline (bag of characters)", result.baseline)):
        if r is None:
            continue
        table = Table(title=_literal(f"{name}: {ckpt.path} on {result.source}"))
        table.add_column("true \\ predicted")
        for label in r.labels:
            table.add_column(_literal(label), justify="right")
        table.add_column("recall", justify="right")
        pct = lambda v: "–" if v is None else f"{v:.2%}"  # noqa: E731
        for label, row in zip(r.labels, r.confusion):
            table.add_row(_literal(label), *[f"{n:,}" for n in row], pct(r.recall[label]))
        table.add_row("precision", *[pct(r.precision[label]) for label in r.labels], "")
        out.print(table)
        line = f"{name}: accuracy {r.accuracy:.2%} on {r.poems:,} poems"
        out.print(Text(line + (f", loss {r.loss:.4f} nats/poem" if r.loss is not None else "")))


# -- models ------------------------------------------------------------------------------------

def _bytes(n: int) -> str:
    return f"{n / 10**6:,.1f} MB" if n >= 10**5 else f"{n / 1000:,.1f} kB"


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the models charlm can find: the shipped ones and the runs under ./checkpoints/.

    Each with its training corpus, size on disk, parameters and validation bits per character, as
    its config.json records them (no weights are loaded). The one generate and eval use without
    --checkpoint is marked default; a broken checkpoint is listed with what is wrong with it.
    """
    from charlm.catalog import list_models

    _need_stdout("the list")
    try:
        found = list_models()
    except CharLMError as e:
        _fail(str(e))
        return
    if as_json:
        print(_dumps({"models": [m.to_dict() for m in found]}))
        return
    if not found:
        _say("note:", "yellow", "no models found: train one with `charlm train CORPUS`")
        return
    table = Table(title="models (* = the default for generate and eval)", show_lines=True)
    table.add_column("")
    table.add_column("model", overflow="fold", ratio=3)
    table.add_column("corpus", overflow="fold", ratio=2)
    for col in ("size", "parameters", "valid bpc"):
        table.add_column(col, justify="right", no_wrap=True)
    for m in found:
        model = Text.assemble(_literal(m.name, style="bold"), (f" ({m.source})", "dim"), "\n", _literal(m.path))
        if m.problem:
            table.add_row("*" if m.default else "", model, _literal("broken: " + m.problem, style="red"), "–", "–", "–")
            continue
        corpus = _literal(m.corpus or "–")
        if m.corpus_chars is not None:
            corpus.append(f"\n{m.corpus_chars:,} characters", style="dim")
        score = ("–" if m.valid_bpc is None else f"{m.valid_bpc:.3f}") if m.task == "lm" else \
            "classifier" + ("" if m.valid_accuracy is None else f"\naccuracy {m.valid_accuracy:.1%}")
        table.add_row("*" if m.default else "", model, corpus, _bytes(m.size_bytes), f"{m.parameters:,}", score)
    Console().print(table)


# -- export ------------------------------------------------------------------------------------

@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="A run's --out folder, or a checkpoint folder.")],
    dest: Annotated[str, typer.Argument(help="The new folder (must not exist).")],
    bf16: Annotated[bool, typer.Option("--bf16", help="Store the weights in bfloat16: half the size.")] = False,
    corpus: Annotated[Optional[str], typer.Option(
        help="Record this path for the training corpus (it must hold the same text), so `charlm eval` finds it.")] = None,
) -> None:
    """Copy a checkpoint into a folder of its own, to share or ship: its best weights, vocabulary,
    lines and config, flat, with the run's metrics; no optimizer state.

    Check what --bf16 costs with `charlm eval` on both (it moves the shipped models by under 0.005 bpc).
    """
    from charlm import checkpoint as ckpt_files

    try:
        out = ckpt_files.export(checkpoint, dest, bf16=bf16, corpus=corpus)
    except CharLMError as e:
        _fail(str(e))
        return
    size = sum(f.stat().st_size for f in out.iterdir())
    _say("exported", "green", f"{out} ({_bytes(size)})")


def main() -> None:
    """The console script, and ``python -m charlm``: the command line with the cyclic garbage
    collector off until the command has settled (``_settled``)."""
    global _collector_held
    _collector_held = True
    gc.disable()
    app(prog_name="charlm")


_collector_held = False  # main() turned the collector off and _settled has not turned it back on


def _settled() -> None:
    """Importing torch and loading a model leave some 170,000 long-lived objects, which Python's cyclic
    collector walked again and again while a command started: 0.18 s of a 2-second `charlm generate`
    (0.09 s within `import torch`). main() starts with the collector off; once the command has its
    model, or before training starts, this moves every object so far out of the collector's reach
    (gc.freeze) and turns it back on, so long runs collect as usual. Short commands that never get
    here (models, export, --help) end with it off. Called from the library's own callers (tests,
    notebooks) it does nothing."""
    global _collector_held
    if _collector_held:
        _collector_held = False
        gc.freeze()
        gc.enable()
