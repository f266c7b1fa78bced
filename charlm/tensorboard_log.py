"""Training and validation curves for TensorBoard (`charlm train --tensorboard DIR`).

A trainer callback beside the terminal display: it writes what the trainer reports and decides
nothing. Optional: it needs the tensorboard package (``pip install 'charlm[tensorboard]'``);
without it, the run's metrics.jsonl is the record.

Scalars, by step: train/loss (nats per character), train/bpc, train/lr, train/chars_per_sec;
valid/loss, valid/bpc and valid/best_bpc at every validation.
"""

from __future__ import annotations

from pathlib import Path

from charlm.errors import CharLMError
from charlm.train import Callbacks, StartInfo, StepEvent, ValidEvent

INSTALL = "pip install 'charlm[tensorboard]'"


class TensorBoardLog(Callbacks):
    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CharLMError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}") from None
        self.log_dir = Path(log_dir)
        self._make = SummaryWriter
        self.writer = None
        try:  # say now, before any training, if the folder cannot be written
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CharLMError(f"cannot write the TensorBoard log to {str(self.log_dir)!r} ({e.strerror or e})") from None

    def on_start(self, info: StartInfo) -> None:
        # A resumed run repeats the steps logged after its last save (at step resumed_from): TensorBoard
        # drops the earlier run's events from the first repeated step on.
        purge = info.resumed_from + 1 if info.resumed_from else None
        try:
            self.writer = self._make(str(self.log_dir), purge_step=purge, flush_secs=10)
        except OSError as e:
            raise CharLMError(f"cannot write the TensorBoard log to {str(self.log_dir)!r} ({e.strerror or e})") from None

    def on_step(self, event: StepEvent) -> None:
        for name in ("loss", "bpc", "lr", "chars_per_sec"):
            self.writer.add_scalar(f"train/{name}", getattr(event, name), event.step)

    def on_valid(self, event: ValidEvent, model, vocab) -> None:
        self.writer.add_scalar("valid/loss", event.valid_loss, event.step)
        self.writer.add_scalar("valid/bpc", event.valid_bpc, event.step)
        self.writer.add_scalar("valid/best_bpc", event.best_bpc, event.step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
