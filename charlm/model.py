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

import math

import torch
from torch import nn

from charlm.errors import CharLMError
from charlm.config import ModelConfig

State = tuple[torch.Tensor, ...]  # (h, c) for the LSTM, (h,) otherwise, each (num_layers, B, H);
#                                   with --conv-kernel K, the last K-1 inputs (K-1, B, E) follow


def make_rnn(cell: str, input_size: int, hidden_size: int, num_layers: int, dropout: float) -> nn.Module:
    """The recurrent layers of the text:

    - ``rnn``: the simple recurrent network h_t = tanh(U h_{t-1} + W x_t + b);
    - ``irnn``: the same with f = ReLU and U initialised to the identity (Le et al. 2015), the
      text's trick that brings a simple RNN close to an LSTM;
    - ``gru``: r_t = σ(W_r x_t + U_r h_{t-1} + b_r), z_t = σ(W_z x_t + U_z h_{t-1} + b_z),
      n_t = tanh(W_n x_t + b_n + r_t ⊙ (U_n h_{t-1} + b'_n)), h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1};
    - ``lstm``: the gated cell described at the top of this module.
    """
    dropout = dropout if num_layers > 1 else 0.0
    if cell == "lstm":
        return nn.LSTM(input_size, hidden_size, num_layers, dropout=dropout, batch_first=True)
    if cell == "gru":
        return nn.GRU(input_size, hidden_size, num_layers, dropout=dropout, batch_first=True)
    nonlinearity = "tanh" if cell == "rnn" else "relu"
    return nn.RNN(input_size, hidden_size, num_layers, nonlinearity=nonlinearity, dropout=dropout, batch_first=True)


# One time step through torch's per-layer cell functions: the same equations as the modules above
# (rnn_tanh_cell is h_t = tanh(W x_t + b + U h_{t-1} + b'), rnn_relu_cell the IRNN's ReLU), without
# the set-up nn.LSTM/GRU/RNN pay on every call. Decoding calls the network once per character, so
# that set-up was most of a step: 2.6 → 1.1 ms for the Tang model at one row on one thread.
_CELLS = {nn.LSTM: torch.lstm_cell, nn.GRU: torch.gru_cell}


def _cell(rnn: nn.Module):
    if type(rnn) is nn.RNN:
        return torch.rnn_tanh_cell if rnn.nonlinearity == "tanh" else torch.rnn_relu_cell
    return _CELLS.get(type(rnn))


def run_rnn(rnn: nn.Module, x: torch.Tensor, state):
    """``rnn`` (a batch-first nn.LSTM/GRU/RNN, or a quantised copy) over x (B, T, I) from ``state``
    ((h, c) or h, each (L, B, H)) → (B, T, H) and the new state. A single step out of training, the
    decoding case, goes layer by layer through the cell functions; anything else through the module."""
    cell = _cell(rnn)
    if cell is None or x.size(1) != 1 or (rnn.training and rnn.dropout) or rnn.bidirectional \
            or getattr(rnn, "proj_size", 0):
        return rnn(x, state)
    lstm = type(rnn) is nn.LSTM
    h, c = state if lstm else (state, None)
    inp, hs, cs = x[:, 0], [], []
    for layer in range(rnn.num_layers):
        weights = [getattr(rnn, f"{k}_l{layer}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if lstm:
            inp, c_l = cell(inp, (h[layer], c[layer]), *weights)
            cs.append(c_l)
        else:
            inp = cell(inp, h[layer], *weights)
        hs.append(inp)
    new_h = torch.stack(hs)
    return inp[:, None], ((new_h, torch.stack(cs)) if lstm else new_h)


class CausalSeparableConv(nn.Module):
    """A causal, depthwise-separable 1-D convolution block ahead of the recurrent layers.

    Depthwise: each embedding channel is convolved over time with its own kernel of width K, seeing
    only x_{t-K+1} … x_t (the left context is padded with the carried last K-1 inputs, so the output
    at t never depends on anything after t); pointwise: a 1×1 convolution mixes the channels. The
    block is residual: y = x + GELU(pointwise(depthwise(x))).
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.depthwise = nn.Conv1d(channels, channels, kernel, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, C), past: (K-1, B, C) → y: (B, T, C) and the new past (K-1, B, C)."""
        full = torch.cat([past.transpose(0, 1).to(x.dtype), x], dim=1)  # (B, K-1+T, C)
        y = self.pointwise(self.depthwise(full.transpose(1, 2)))  # (B, C, T)
        y = x + self.act(y.transpose(1, 2))
        return y, full[:, full.size(1) - (self.kernel - 1) :].transpose(0, 1)


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational (locked) dropout (Gal & Ghahramani 2016): x (B, T, C) is multiplied by one
    mask per sequence and channel, the same at every time step."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


def embedding_dropout(embed: nn.Embedding, x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Embedding dropout (Gal & Ghahramani 2016; Merity et al. 2017): whole rows of the embedding
    matrix — every occurrence of a character — are dropped together, the rest scaled by 1/(1-p)."""
    if not training or p == 0.0:
        return embed(x)
    mask = embed.weight.new_empty(embed.weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
    return nn.functional.embedding(x, embed.weight * mask)


class CharLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.conv = CausalSeparableConv(c.embed_dim, c.conv_kernel) if c.conv_kernel else None
        if c.residual or c.locked_dropout:
            # one module per layer, so dropout (locked or not) and residual connections sit between
            # them; with --residual: x_1 = RNN_1(e); x_l = x_{l-1} + RNN_l(LayerNorm(x_{l-1}))
            self.layers = nn.ModuleList(
                [make_rnn(c.cell, c.embed_dim if i == 0 else c.hidden_size, c.hidden_size, 1, 0.0)
                 for i in range(c.num_layers)])
            self.norms = nn.ModuleList([nn.LayerNorm(c.hidden_size) for _ in range(c.num_layers - 1)]) \
                if c.residual else None
        else:
            self.rnn = make_rnn(c.cell, c.embed_dim, c.hidden_size, c.num_layers, c.dropout)
        self.drop = nn.Dropout(c.dropout)
        # Tied weights share the embedding matrix with the output layer V; when the hidden size
        # differs from the embedding size a linear projection brings h_t down to embed_dim first.
        if c.tie_weights and c.hidden_size != c.embed_dim:
            self.proj = nn.Linear(c.hidden_size, c.embed_dim, bias=False)
        else:
            self.proj = None
        if c.softmax == "adaptive":
            from charlm.config import adaptive_cutoffs

            # adaptive softmax: frequent characters in a small head, rare ones in cheaper clusters
            cutoffs = c.cutoffs or adaptive_cutoffs(c.vocab_size)
            # each tail cluster projects to hidden/4^i dimensions; tiny models keep them full size
            div = 4.0 if c.hidden_size >= 4 ** len(cutoffs) else 1.0
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(c.hidden_size, c.vocab_size, cutoffs, div_value=div)
            self.head = None
        else:
            self.adaptive = None
            self.head = nn.Linear(c.embed_dim if c.tie_weights else c.hidden_size, c.vocab_size)
            if c.tie_weights:
                self.head.weight = self.embed.weight
        self._init_weights()

    @property
    def _rnns(self) -> list[nn.Module]:
        return list(self.layers) if self._per_layer else [self.rnn]

    @property
    def _per_layer(self) -> bool:
        return self.config.residual or self.config.locked_dropout

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # decoding calls this twice a character; skip the no-op dispatch
            return x
        if self.config.locked_dropout:
            return locked_dropout(x, self.config.dropout, self.training)
        return self.drop(x)

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.05)
        if self.head is not None:
            nn.init.zeros_(self.head.bias)
        h = self.config.hidden_size
        for rnn in self._rnns:
            for name, p in rnn.named_parameters():
                with torch.no_grad():
                    if self.config.cell == "lstm" and name.startswith("bias_ih"):
                        # forget-gate bias 1 lets the cell remember from the start (Jozefowicz et al. 2015);
                        # PyTorch's gate order is input, forget, cell, output
                        p[h : 2 * h].fill_(1.0)
                    elif name.startswith("bias_hh"):
                        nn.init.zeros_(p)
                    elif self.config.cell == "irnn" and name.startswith("weight_hh"):
                        p.copy_(torch.eye(h))  # IRNN: recurrent matrix = identity
                    elif self.config.cell == "irnn" and name.startswith("bias_ih"):
                        nn.init.zeros_(p)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x: (B, T) character ids → logits (B, T, vocab_size) and the state to carry on with.

        With the adaptive softmax the "logits" are its exact log-probabilities over the whole
        vocabulary (softmax of them gives the same distribution back)."""
        out, state = self.features(x, state)
        if self.adaptive is not None:
            flat = self.adaptive.log_prob(out.reshape(-1, out.size(-1)))
            return flat.view(*out.shape[:-1], -1), state
        return self.head(out), state

    def loss(self, x: torch.Tensor, y: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Mean cross-entropy (nats/char) of targets y (B, T) given x; the training objective.
        The adaptive softmax computes it without the full vocabulary for rare clusters."""
        out, state = self.features(x, state)
        if self.adaptive is not None:
            return self.adaptive(out.reshape(-1, out.size(-1)), y.reshape(-1)).loss, state
        logits = self.head(out)
        # Under bf16 autocast the logits stay bf16 for the loss (autocast would upcast them, which
        # costs ~40% of a training step at 64×128×|V|); the log-softmax kernel accumulates in fp32.
        with torch.autocast(logits.device.type, enabled=False):
            loss = nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        return loss, state

    def features(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Everything before the output layer: (B, T) ids → (B, T, D) and the carried state."""
        c = self.config
        if state is None:
            state = self.init_state(x.size(0))
        n_rnn = 2 if c.cell == "lstm" else 1
        e = self._drop(embedding_dropout(self.embed, x, c.embed_dropout, self.training))  # (B, T, E)
        new: list[torch.Tensor] = []
        if self.conv is not None:
            e, past = self.conv(e, state[n_rnn])
        rnn_state = state[:n_rnn]
        if not self._per_layer:
            out, s = run_rnn(self.rnn, e, rnn_state if n_rnn == 2 else rnn_state[0])  # (B, T, H)
            new.extend(s if n_rnn == 2 else (s,))
        else:
            per_layer = []
            out = e
            for i, rnn in enumerate(self.layers):
                s_i = tuple(t[i : i + 1] for t in rnn_state)
                if i == 0:
                    y, s = run_rnn(rnn, out, s_i if n_rnn == 2 else s_i[0])
                    out = y
                elif c.residual:
                    y, s = run_rnn(rnn, self.norms[i - 1](out), s_i if n_rnn == 2 else s_i[0])
                    out = out + self._drop(y)
                else:
                    y, s = run_rnn(rnn, self._drop(out), s_i if n_rnn == 2 else s_i[0])
                    out = y
                per_layer.append(s if n_rnn == 2 else (s,))
            new.extend(torch.cat([p[k] for p in per_layer], 0) for k in range(n_rnn))
        if self.conv is not None:
            new.append(past)
        out = self._drop(out)
        if self.proj is not None:
            out = self.proj(out)  # (B, T, E)
        return out, tuple(new)

    def init_state(self, batch_size: int) -> State:
        c = self.config
        dev = self.embed.weight.device
        n_rnn = 2 if c.cell == "lstm" else 1
        state = [torch.zeros(c.num_layers, batch_size, c.hidden_size, device=dev) for _ in range(n_rnn)]
        if c.conv_kernel:
            state.append(torch.zeros(c.conv_kernel - 1, batch_size, c.embed_dim, device=dev))
        return tuple(state)


def model_device(model: nn.Module) -> torch.device:
    """The device a model's weights are on."""
    return next(model.parameters()).device


def detach_state(state: State) -> State:
    """Cut the graph at a window edge (truncated BPTT) while keeping the values."""
    return tuple(s.detach() for s in state)  # type: ignore[return-value]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32; the shipped model has 5.1 million


def planned_size(config: ModelConfig) -> int:
    """The number of values (parameters and buffers) CharLM(config) would hold, computed without
    allocating them; refuses, with a sentence, a model larger than MAX_PARAMETERS."""
    sizes = (f"vocabulary {config.vocab_size}, embedding {config.embed_dim}, hidden {config.hidden_size}, "
             f"{config.num_layers} layers")
    n = sum(math.prod(s) for s in expected_shapes(config).values())
    if n > MAX_PARAMETERS:
        raise CharLMError(f"a model of {n:,} parameters ({sizes}) is larger than the {MAX_PARAMETERS:,} "
                          f"charlm builds")
    return n


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor in a saved CharLM(config), computed from the config alone, so
    nothing is allocated (and nothing slow is imported: building on the meta device would pull in
    torch's compiler, seconds on every load). A tied output weight appears once, under the
    embedding's name, as ``safetensors.torch.save_model`` writes it. tests/test_hostile_checkpoints.py
    checks these shapes against real models of every kind."""
    c = config
    V, E, H = c.vocab_size, c.embed_dim, c.hidden_size
    gates = {"lstm": 4, "gru": 3}.get(c.cell, 1)
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (V, E)}
    if c.conv_kernel:
        shapes.update({"conv.depthwise.weight": (E, 1, c.conv_kernel), "conv.depthwise.bias": (E,),
                       "conv.pointwise.weight": (E, E, 1), "conv.pointwise.bias": (E,)})

    def recurrent(prefix: str, layer: int, inputs: int) -> None:
        shapes.update({f"{prefix}.weight_ih_l{layer}": (gates * H, inputs), f"{prefix}.weight_hh_l{layer}": (gates * H, H),
                       f"{prefix}.bias_ih_l{layer}": (gates * H,), f"{prefix}.bias_hh_l{layer}": (gates * H,)})

    for i in range(c.num_layers):
        if c.residual or c.locked_dropout:
            recurrent(f"layers.{i}", 0, E if i == 0 else H)
        else:
            recurrent("rnn", i, E if i == 0 else H)
    if c.residual:
        for i in range(c.num_layers - 1):
            shapes.update({f"norms.{i}.weight": (H,), f"norms.{i}.bias": (H,)})
    if c.tie_weights and H != E:
        shapes["proj.weight"] = (E, H)
    if c.softmax == "adaptive":
        from charlm.config import adaptive_cutoffs

        cutoffs = [*(c.cutoffs or adaptive_cutoffs(V)), V]
        div = 4.0 if H >= 4 ** (len(cutoffs) - 1) else 1.0
        shapes["adaptive.head.weight"] = (cutoffs[0] + len(cutoffs) - 1, H)
        for i in range(len(cutoffs) - 1):
            hsz = int(H // (div ** (i + 1)))
            shapes[f"adaptive.tail.{i}.0.weight"] = (hsz, H)
            shapes[f"adaptive.tail.{i}.1.weight"] = (cutoffs[i + 1] - cutoffs[i], hsz)
    else:
        if not c.tie_weights:
            shapes["head.weight"] = (V, H)
        shapes["head.bias"] = (V,)
    return shapes
