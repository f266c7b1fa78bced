"""Couplets (对联, the parallel middle couplets of regulated verse): the pairs file, its split, its
batches, and the encoder–decoder that answers a first line (上联) with a second (下联).

This is the text's *asynchronous sequence to sequence* mode (异步的序列到序列模式, also called the
encoder–decoder): unlike the synchronous mode, where each input step yields one output at once,
the encoder first reads the whole input sequence, and only then the decoder writes the output
sequence, one character per step. Here:

- Encoder: embedding → bidirectional LSTM over the first line x₁…x_S; its states
  m_s = [→h_s; ←h_s] (2H each) are the memory the decoder attends to.
- Decoder: embedding → LSTM started from h₀ = tanh(W_b · mean_s m_s) (every layer), c₀ = 0, fed
  the previous character of the answer (the newline, id 1, before the first). Decoding carries
  (h, c) one step per character, as the language model does.
- Attention (additive, the text's s(m, q) = vᵀ tanh(W m + U q)): at step t, with q_t the
  decoder's top state,

      e_{t,s} = vᵀ tanh(W_k m_s + W_q q_t + b_q)
      α_{t,s} = exp(e_{t,s}) / Σ_{s'} exp(e_{t,s'})
      c_t     = Σ_s α_{t,s} m_s

  and the output is y_t = softmax(Eᵀ tanh(W_o [q_t; c_t] + b_o) + b), E the (shared) character
  embedding. tests/test_couplet_model.py recomputes these equations by hand from the module.

Pairs file: one pair a line, ``上联<TAB>下联``, both lines of the same length; the pairs of one poem
are consecutive lines and a blank line ends a poem (``python -m charlm.corpora --couplets``). The
split keeps a poem's pairs together: charlm.data.split_poems on one line per poem.

Only torch and the vocabulary here; training, decoding and scoring live in charlm.seq2seq.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from charlm.config import ModelConfig
from charlm.data import split_poems
from charlm.errors import CharLMError
from charlm.vocab import EOS_ID, printable

Pair = tuple[str, str]
START_ID = EOS_ID  # what the decoder reads before the first character of the answer
# A first line longer than this is refused: the corpus's lines have 5 or 7 characters.
MAX_LINE_CHARS = 32


# -- the pairs file --------------------------------------------------------------------------

def read_pairs(text: str, what: str = "the pairs file") -> list[list[Pair]]:
    """The poems of a pairs file, each a list of (上联, 下联). One sentence for the first bad line."""
    poems: list[list[Pair]] = []
    current: list[Pair] = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            if current:
                poems.append(current)
            current = []
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
            raise CharLMError(f"line {number} of {what} is not a pair written 上联<TAB>下联: "
                              f"{printable(line[:40])!r}")
        first, second = parts[0].strip(), parts[1].strip()
        if len(first) != len(second):
            raise CharLMError(f"line {number} of {what} pairs lines of different lengths "
                              f"({len(first)} and {len(second)} characters)")
        if len(first) > MAX_LINE_CHARS:
            raise CharLMError(f"line {number} of {what} has a line of {len(first)} characters, "
                              f"more than the {MAX_LINE_CHARS} a couplet may have")
        current.append((first, second))
    if current:
        poems.append(current)
    if not poems:
        raise CharLMError(f"{what} holds no pairs (one a line, written 上联<TAB>下联)")
    return poems


def split_pairs(poems: list[list[Pair]], valid_fraction: float, seed: int
                ) -> tuple[list[list[Pair]], list[list[Pair]]]:
    """(train, valid) poems of pairs, split by poem with the language model's split
    (charlm.data.split_poems), so both pairs of a poem land on one side. A file of one poem puts
    its last pair on the validation side."""
    if len(poems) == 1:
        pairs = poems[0]
        if len(pairs) < 2:
            raise CharLMError("the pairs file needs at least two pairs: one to train on, one to validate")
        return [pairs[:-1]], [pairs[-1:]]
    text = "\n".join("\t".join(f"{a}\t{b}" for a, b in pairs) for pairs in poems)
    train, valid = split_poems(text, valid_fraction, seed)

    def unpack(lines: list[str]) -> list[list[Pair]]:
        return [list(zip(cells[0::2], cells[1::2])) for cells in (line.split("\t") for line in lines)]

    return unpack(train), unpack(valid)


def flatten(poems: list[list[Pair]]) -> list[Pair]:
    return [pair for pairs in poems for pair in pairs]


def pairs_text(pairs: list[Pair]) -> str:
    """The characters of the pairs, for building the vocabulary (one line a pair)."""
    return "".join(f"{a}{b}\n" for a, b in pairs)


# -- batches ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Encoded:
    """Pairs as ids: ``first[i]`` and ``second[i]`` are int64 arrays of one length."""

    first: list[np.ndarray]
    second: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.first)

    @property
    def chars(self) -> int:
        """Characters of the second lines: what is scored."""
        return int(sum(len(s) for s in self.second))


def encode_pairs(vocab, pairs: list[Pair]) -> Encoded:
    return Encoded([np.asarray(vocab.encode(a), dtype=np.int64) for a, _ in pairs],
                   [np.asarray(vocab.encode(b), dtype=np.int64) for _, b in pairs])


def batches(data: Encoded, batch_size: int, order_seed: int | None = None) -> list[np.ndarray]:
    """Index batches of pairs of one length each (no padding). With ``order_seed``, the pairs are
    shuffled within each length and the batches shuffled, by that seed; else in file order."""
    rng = np.random.default_rng(order_seed) if order_seed is not None else None
    by_length: dict[int, list[int]] = {}
    for i, f in enumerate(data.first):
        by_length.setdefault(len(f), []).append(i)
    out = []
    for length in sorted(by_length):
        idx = np.asarray(by_length[length], dtype=np.int64)
        if rng is not None:
            idx = rng.permutation(idx)
        out += [idx[s: s + batch_size] for s in range(0, len(idx), batch_size)]
    if rng is not None:
        out = [out[i] for i in rng.permutation(len(out))]
    return out


def batch_tensors(data: Encoded, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(first lines, second lines), each (B, L) int64."""
    x = torch.from_numpy(np.stack([data.first[i] for i in index]))
    y = torch.from_numpy(np.stack([data.second[i] for i in index]))
    return x, y


# -- the model -------------------------------------------------------------------------------

State = tuple[torch.Tensor, torch.Tensor]  # the decoder's (h, c), each (num_layers, B, H)


@dataclass(frozen=True)
class Memory:
    """What the encoder leaves for the decoder: its states m (B, S, 2H) and W_k m (B, S, H)."""

    states: torch.Tensor
    keys: torch.Tensor

    def take(self, index: torch.Tensor) -> "Memory":
        return Memory(self.states[index], self.keys[index])


def attend(query: torch.Tensor, memory: Memory, w_q: nn.Linear, v: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Additive attention: query (B, T, H) → context (B, T, 2H) and weights α (B, T, S), with
    e_{t,s} = vᵀ tanh(W_k m_s + W_q q_t + b_q), α = softmax_s(e), c_t = Σ_s α_{t,s} m_s."""
    e = v(torch.tanh(memory.keys[:, None, :, :] + w_q(query)[:, :, None, :])).squeeze(-1)  # (B, T, S)
    alpha = torch.softmax(e.float(), dim=-1).to(memory.states.dtype)
    return alpha @ memory.states, alpha  # (B, T, 2H), (B, T, S)


class CoupletModel(nn.Module):
    """Encoder (bidirectional LSTM) and decoder (LSTM with additive attention over the encoder's
    states); see the module docstring for the equations. Built from a ModelConfig: vocab_size,
    embed_dim, hidden_size, num_layers and dropout are used; the cell is always the LSTM."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.cell != "lstm":
            raise CharLMError(f"a couplet model uses the LSTM cell; --cell {config.cell} is for --task lm")
        self.config = config
        V, E, H, L = config.vocab_size, config.embed_dim, config.hidden_size, config.num_layers
        between = config.dropout if L > 1 else 0.0
        self.embed = nn.Embedding(V, E)
        self.encoder = nn.LSTM(E, H, L, dropout=between, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(2 * H, H)
        self.decoder = nn.LSTM(E, H, L, dropout=between, batch_first=True)
        self.attn_key = nn.Linear(2 * H, H, bias=False)
        self.attn_query = nn.Linear(H, H)
        self.attn_v = nn.Linear(H, 1, bias=False)
        self.combine = nn.Linear(3 * H, E)
        self.head_bias = nn.Parameter(torch.zeros(V))
        self.drop = nn.Dropout(config.dropout)
        nn.init.normal_(self.embed.weight, std=E ** -0.5)
        for lstm in (self.encoder, self.decoder):  # forget-gate biases start at 1, as the LM's do
            for name, p in lstm.named_parameters():
                if name.startswith("bias_ih"):
                    with torch.no_grad():
                        p.zero_()
                        p[H: 2 * H] = 1.0

    def encode(self, x: torch.Tensor) -> tuple[Memory, State]:
        """Read the whole first line x (B, S): the memory, and the decoder's starting state."""
        m, _ = self.encoder(self.drop(self.embed(x)))  # (B, S, 2H)
        h0 = torch.tanh(self.bridge(m.mean(dim=1)))  # (B, H)
        h = h0[None].expand(self.config.num_layers, -1, -1).contiguous()
        return Memory(m, self.attn_key(m)), (h, torch.zeros_like(h))

    def decode(self, y_in: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) for decoder inputs y_in (B, T), from ``state``; the new state."""
        q, state = self.decoder(self.drop(self.embed(y_in)), state)  # (B, T, H)
        context, _ = attend(q, memory, self.attn_query, self.attn_v)
        out = torch.tanh(self.combine(self.drop(torch.cat([q, context], dim=-1))))  # (B, T, E)
        return out @ self.embed.weight.t() + self.head_bias, state

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (B, T, V) for every character of the answers y (B, T) given x."""
        memory, state = self.encode(x)
        y_in = torch.cat([torch.full_like(y[:, :1], START_ID), y[:, :-1]], dim=1)
        logits, _ = self.decode(y_in, state, memory)
        return logits

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats per character) of the answers y given the first lines x."""
        logits = self(x, y)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))

    def step(self, tokens: torch.Tensor, state: State, memory: Memory) -> tuple[torch.Tensor, State]:
        """One decoding step: the previous characters (B,) → logits (B, V) and the carried state."""
        logits, state = self.decode(tokens[:, None], state, memory)
        return logits[:, 0], state


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of a saved CoupletModel(config), from the config alone."""
    V, E, H, L = config.vocab_size, config.embed_dim, config.hidden_size, config.num_layers
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (V, E)}
    for i in range(L):
        for suffix in ("", "_reverse"):
            shapes.update({f"encoder.weight_ih_l{i}{suffix}": (4 * H, E if i == 0 else 2 * H),
                           f"encoder.weight_hh_l{i}{suffix}": (4 * H, H),
                           f"encoder.bias_ih_l{i}{suffix}": (4 * H,), f"encoder.bias_hh_l{i}{suffix}": (4 * H,)})
    shapes.update({"bridge.weight": (H, 2 * H), "bridge.bias": (H,)})
    for i in range(L):
        shapes.update({f"decoder.weight_ih_l{i}": (4 * H, E if i == 0 else H), f"decoder.weight_hh_l{i}": (4 * H, H),
                       f"decoder.bias_ih_l{i}": (4 * H,), f"decoder.bias_hh_l{i}": (4 * H,)})
    shapes.update({"attn_key.weight": (H, 2 * H), "attn_query.weight": (H, H), "attn_query.bias": (H,),
                   "attn_v.weight": (1, H), "combine.weight": (E, 3 * H), "combine.bias": (E,),
                   "head_bias": (V,)})
    return shapes
