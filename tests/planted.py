"""A synthetic language with one planted rule, and a tiny weight-sparse model trained on it.

The rule mirrors the paper's quote task. Tokens are random fillers, except that an *opener*
(``A1`` or ``B1``) appears early and a *query* token ``Q`` ends the prompt; the next token is the
*closer* matching the opener (``A2`` after ``A1``, ``B2`` after ``B1``). A contrast pair is two
prompts identical except for the opener, answered ``A2`` vs ``B2``. Solving it needs attention
from ``Q`` back to the opener (a content match, no positions), so a working circuit needs at
least a query/key pair and a value path; everything else in the model is irrelevant to it.

Training is a plain Adam loop on the next-token loss, with every weight matrix projected to its
largest-magnitude entries after each step (the trainer's idea, without its schedules), so the
model is weight-sparse and its edges mean something. It takes a few seconds on two cores.
"""

from __future__ import annotations

import torch

from sparse_lens import SparseConfig, SparseTransformer
from sparse_lens.tasks.batch import TaskBatch

N_FILLER = 24
A1, B1, A2, B2, Q = range(N_FILLER, N_FILLER + 5)
D_VOCAB = 32
N_CTX = 16
MATRICES = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")
EMBEDDINGS = ("W_E", "W_U")  # kept EMBED_FACTOR times denser, as the paper keeps embeddings denser
EMBED_FACTOR = 4


def planted_config(**overrides) -> SparseConfig:
    fields = dict(
        n_layers=1,
        d_model=128,
        n_heads=8,
        d_head=8,
        d_mlp=256,
        n_ctx=N_CTX,
        d_vocab=D_VOCAB,
        bigram_table="off",
        model_name="planted",
    )
    fields.update(overrides)
    return SparseConfig(**fields)


def _prompts(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` prompt skeletons: fillers [n, N_CTX], prompt lengths [n] and opener positions [n].

    A prompt of length L holds Q at L - 1; the opener sits in the first half.
    """
    tokens = torch.randint(0, N_FILLER, (n, N_CTX), generator=generator)
    length = torch.randint(8, N_CTX, (n,), generator=generator)  # Q at length-1 <= N_CTX-2
    opener_pos = (torch.rand(n, generator=generator) * (length // 2 - 1)).long() + 1
    return tokens, length, opener_pos


def pretraining_tokens(n: int, seed: int = 0) -> torch.Tensor:
    """[n, N_CTX] sequences: prompt, its closer, then fillers."""
    generator = torch.Generator().manual_seed(seed)
    tokens, length, opener_pos = _prompts(n, generator)
    is_b = torch.rand(n, generator=generator) < 0.5
    rows = torch.arange(n)
    tokens[rows, opener_pos] = torch.where(is_b, B1, A1)
    tokens[rows, length - 1] = Q
    tokens[rows, length] = torch.where(is_b, B2, A2)
    return tokens


def planted_batch(n_pairs: int, seed: int = 0, shuffle_labels: bool = False) -> TaskBatch:
    """Contrast pairs (rows 2i / 2i+1: opener A1 / B1, else identical), right-padded."""
    generator = torch.Generator().manual_seed(seed)
    base, length, opener_pos = _prompts(n_pairs, generator)
    rows = torch.arange(n_pairs)
    base[rows, length - 1] = Q
    base[torch.arange(N_CTX)[None, :] >= length[:, None]] = 0  # padding
    a, b = base.clone(), base.clone()
    a[rows, opener_pos] = A1
    b[rows, opener_pos] = B1
    tokens = torch.stack([a, b], dim=1).reshape(2 * n_pairs, N_CTX)
    last_pos = (length - 1).repeat_interleave(2)
    label = torch.tensor([0, 1]).repeat(n_pairs)
    return TaskBatch(
        tokens=tokens,
        last_pos=last_pos,
        answer_ids=torch.tensor([[A2, B2]]).repeat(2 * n_pairs, 1),
        label=label,
        pair_index=torch.arange(n_pairs).repeat_interleave(2),
        prompts=[
            " ".join(map(str, row[: int(n) + 1].tolist()))
            for row, n in zip(tokens, last_pos, strict=True)
        ],
        task="planted_quote",
    )


@torch.no_grad()
def project(model: SparseTransformer, density: float) -> None:
    """Keep the largest-magnitude ``density`` fraction of every weight matrix (embeddings:
    ``EMBED_FACTOR`` times more), zero the rest."""
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in MATRICES or leaf in EMBEDDINGS:
            keep = density * (EMBED_FACTOR if leaf in EMBEDDINGS else 1)
            k = max(1, int(min(1.0, keep) * param.numel()))
            threshold = param.abs().flatten().kthvalue(param.numel() - k + 1).values
            param.mul_(param.abs() >= threshold)


def train_planted(
    steps: int = 120, density: float = 0.05, seed: int = 0, **overrides
) -> SparseTransformer:
    """A tiny AbsTopK model trained on the planted language (a few seconds on two cores)."""
    torch.manual_seed(seed)
    model = SparseTransformer(planted_config(**overrides), seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = pretraining_tokens(4096, seed=seed + 1)
    generator = torch.Generator().manual_seed(seed + 2)
    project(model, density)
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (64,), generator=generator)]
        loss = model(batch, return_type="loss")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        project(model, density)
    return model.eval()
