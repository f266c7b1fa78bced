"""The recurrent language model: embedding → stacked LSTM → dropout → linear to the vocabulary.

The LSTM (nn.LSTM) computes, per layer and time step, with σ the logistic function:

    f_t = σ(W_f x_t + U_f h_{t-1} + b_f)        forget gate
    i_t = σ(W_i x_t + U_i h_{t-1} + b_i)        input gate
    o_t = σ(W_o x_t + U_o h_{t-1} + b_o)        output gate
    c̃_t = tanh(W_c x_t + U_c h_{t-1} + b_c)     candidate cell
    c_t = f_t ⊙ c_{t-1} + i_t ⊙ c̃_t
    h_t = o_t ⊙ tanh(c_t)

and the output layer is the text's y = g(V h_t + c) with g = softmax (applied in the loss).
tests/test_model.py recomputes one step of these equations by hand from the module's weights.
"""

from __future__ import annotations

import torch
from torch import nn

from charlm.config import ModelConfig

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, B, hidden_size)


class CharLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.rnn = nn.LSTM(
            c.embed_dim, c.hidden_size, c.num_layers,
            dropout=c.dropout if c.num_layers > 1 else 0.0, batch_first=True,
        )
        self.drop = nn.Dropout(c.dropout)
        # Tied weights share the embedding matrix with the output layer V; when the hidden size
        # differs from the embedding size a linear projection brings h_t down to embed_dim first.
        if c.tie_weights and c.hidden_size != c.embed_dim:
            self.proj = nn.Linear(c.hidden_size, c.embed_dim, bias=False)
        else:
            self.proj = None
        self.head = nn.Linear(c.embed_dim if c.tie_weights else c.hidden_size, c.vocab_size)
        if c.tie_weights:
            self.head.weight = self.embed.weight
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.05)
        nn.init.zeros_(self.head.bias)
        # A forget-gate bias of 1 lets the cell remember from the start (Jozefowicz et al. 2015).
        h = self.config.hidden_size
        for name, p in self.rnn.named_parameters():
            if name.startswith("bias_ih"):
                with torch.no_grad():
                    p[h : 2 * h].fill_(1.0)  # PyTorch gate order: input, forget, cell, output
            elif name.startswith("bias_hh"):
                nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (B, T) character ids → logits (B, T, vocab_size) and the final (h, c)."""
        e = self.drop(self.embed(x))  # (B, T, E)
        out, state = self.rnn(e, state)  # (B, T, H)
        out = self.drop(out)
        if self.proj is not None:
            out = self.proj(out)  # (B, T, E)
        return self.head(out), state

    def init_state(self, batch_size: int) -> State:
        c = self.config
        z = torch.zeros(c.num_layers, batch_size, c.hidden_size, device=self.embed.weight.device)
        return z, z.clone()


def detach_state(state: State) -> State:
    """Cut the graph at a window edge (truncated BPTT) while keeping the values."""
    return tuple(s.detach() for s in state)  # type: ignore[return-value]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
