"""The classifier: sequence to class. The language model's embedding and recurrent layers read a
poem; one summary of their states goes through a linear layer over the labels.

The text's sequence-to-class mode: the whole input sequence x_1 … x_T is read, and one output is
made at the end. With the recurrent states h_1 … h_T of the top layer (after the language model's
projection, when it has one), the summary is

    s = h_T                      pooling "last": the final state
    s = (1/T) Σ_t h_t            pooling "mean": the states averaged over the poem

and the label distribution is the text's output layer with g = softmax,

    p(y | x) = softmax(V s + c)

(the softmax is applied in the loss and in ``probabilities``). tests/test_classify_model.py
recomputes it by hand from the module's weights. Every poem is read from the newline that marks a
poem start, as the language model reads it, so a language model's weights are a fair start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from charlm.config import POOLINGS, ModelConfig
from charlm.errors import CharLMError, describe
from charlm.model import CharLM, expected_shapes

MAX_LABELS = 1000
MAX_LABEL_CHARS = 64


@dataclass
class ClassifierConfig:
    """The classifier's own settings, saved beside the model and training sections."""

    labels: list[str]
    pooling: str = "last"

    def __post_init__(self) -> None:
        check_labels(self.labels)
        if self.pooling not in POOLINGS:
            raise CharLMError(f"--pooling must be one of {', '.join(POOLINGS)}, not {describe(self.pooling)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> "ClassifierConfig":
        if not isinstance(data, dict):
            raise CharLMError(f"the classifier section must be an object, not {describe(data)}")
        labels, pooling = data.get("labels"), data.get("pooling", "last")
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CharLMError(f"the classifier's labels must be a list of strings, not {describe(labels)}")
        if not isinstance(pooling, str):
            raise CharLMError(f"the classifier's pooling must be a string, not {describe(pooling)}")
        return cls(labels, pooling)


def check_labels(labels: list[str]) -> None:
    """At least two distinct, non-empty labels of a printable length."""
    if len(labels) < 2:
        raise CharLMError(f"a classifier needs at least two labels, not {len(labels)}"
                          + (f" ({describe(labels[0])})" if labels else ""))
    if len(labels) > MAX_LABELS:
        raise CharLMError(f"a classifier takes at most {MAX_LABELS} labels, not {len(labels):,}")
    if len(set(labels)) != len(labels):
        raise CharLMError("the classifier's labels must be distinct")
    for label in labels:
        if not label.strip() or len(label) > MAX_LABEL_CHARS or "\t" in label or "\n" in label:
            raise CharLMError(f"label {describe(label)} must be 1 to {MAX_LABEL_CHARS} characters, "
                              f"not blank, without a tab or newline")


class CharClassifier(nn.Module):
    """``encoder`` is a whole CharLM (its output layer unused), so a language model's weights load
    into it unchanged (--init-from); ``head`` is V, c of the equation above."""

    def __init__(self, config: ModelConfig, classifier: ClassifierConfig) -> None:
        super().__init__()
        self.config, self.classifier = config, classifier
        self.encoder = CharLM(config)
        self.head = nn.Linear(summary_size(config), len(classifier.labels))
        nn.init.zeros_(self.head.bias)

    def summary(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, T) ids, right-padded; lengths: (B,) real lengths ≥ 1 → s: (B, D)."""
        out, _ = self.encoder.features(x)  # (B, T, D); position t sees only x_1 … x_t
        if self.classifier.pooling == "last":
            return out[torch.arange(x.size(0), device=x.device), lengths - 1]  # h_T of each poem
        mask = (torch.arange(x.size(1), device=x.device)[None, :] < lengths[:, None]).to(out.dtype)  # (B, T)
        return (out * mask[..., None]).sum(1) / lengths[:, None].to(out.dtype)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits V s + c, (B, labels)."""
        return self.head(self.summary(x, lengths))

    def loss(self, x: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor], state=None):
        """Mean cross-entropy of the labels; the signature of CharLM.loss, so charlm.train.train_step
        runs it: ``batch`` is (lengths, labels), and there is no state to carry."""
        lengths, y = batch
        logits = self(x, lengths)
        with torch.autocast(logits.device.type, enabled=False):
            loss = nn.functional.cross_entropy(logits.float(), y)
        return loss, ()

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """p(y | x), (B, labels), in eval mode (restored afterwards)."""
        was = self.training
        self.eval()
        try:
            return torch.softmax(self(x, lengths).float(), dim=-1)
        finally:
            self.train(was)


def summary_size(config: ModelConfig) -> int:
    """D: what CharLM.features gives, the embedding size when a projection ties it to the input."""
    if config.tie_weights and config.softmax != "adaptive" and config.hidden_size != config.embed_dim:
        return config.embed_dim
    return config.hidden_size


def classifier_shapes(config: ModelConfig, classifier: ClassifierConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor a saved CharClassifier holds (see model.expected_shapes)."""
    shapes = {f"encoder.{k}": v for k, v in expected_shapes(config).items()}
    shapes["head.weight"] = (len(classifier.labels), summary_size(config))
    shapes["head.bias"] = (len(classifier.labels),)
    return shapes
