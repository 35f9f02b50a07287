"""An orthogonal rotation of the residual stream folded into the weights (QuaRot / SpinQuant's R1).

For a Llama-architecture model: every RMSNorm's scale is folded into the linear layers that read
its output (the norm keeps unit scale), the output head is untied from the embedding, and with an
orthogonal Q (d x d) the residual stream becomes h Q:
    embedding E -> E Q;  layers reading the stream (q, k, v, gate, up, head) W -> W Q;
    layers writing it (o, down) W -> Q^T W.
RMSNorm without a scale commutes with Q, so the float model computes the same function; the
weights' outlier channels are spread over all channels, which is what rotation buys a quantizer.
Architectures with norms on a block's output (Gemma-3's post-norms) do not commute with Q and are
refused.
"""

from __future__ import annotations

import math

import torch

from .errors import MLWQError


def hadamard(n: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix of order n (a power of two), scaled to be orthogonal."""
    if n & (n - 1):
        raise MLWQError(f"no Sylvester Hadamard matrix of order {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def random_orthogonal(n: int, kind: str, seed: int) -> torch.Tensor:
    """kind 'orthogonal': Haar-random (QR of a Gaussian); 'hadamard': random signs times the
    Kronecker product of the largest power-of-two Hadamard dividing n and a random orthogonal
    matrix of the remaining factor (QuaRot's randomized Hadamard for widths like 576 = 64 x 9)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "orthogonal":
        q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        return (q * torch.sign(torch.diagonal(r))).contiguous()
    if kind == "hadamard":
        p = n & -n                                           # largest power of two dividing n
        rest = random_orthogonal(n // p, "orthogonal", seed + 1) if n // p > 1 else torch.ones(1, 1, dtype=torch.float64)
        signs = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
        return signs[:, None] * torch.kron(hadamard(p), rest)
    raise MLWQError(f"unknown rotation {kind!r}; choose orthogonal or hadamard")


@torch.no_grad()
def rotate_residual(model, kind: str = "hadamard", seed: int = 0):
    """Fold the norms and rotate the residual stream of a Llama-architecture model, in place."""
    if model.config.model_type != "llama":
        raise MLWQError(f"residual rotation supports Llama-architecture models, not {model.config.model_type}")
    inner = model.model
    d = inner.embed_tokens.weight.shape[1]
    q = random_orthogonal(d, kind, seed)

    def fold(norm, layers):
        g = norm.weight.double()
        for lin in layers:
            lin.weight.data = (lin.weight.double() * g).to(lin.weight.dtype)
        norm.weight.data.fill_(1.0)

    def reads(lin):          # y = x W^T, x rotated: W -> W Q
        lin.weight.data = (lin.weight.double() @ q).to(lin.weight.dtype)

    def writes(lin):         # its output joins the stream: W -> Q^T W
        lin.weight.data = (q.T @ lin.weight.double()).to(lin.weight.dtype)
        if lin.bias is not None:
            lin.bias.data = (lin.bias.double() @ q).to(lin.bias.dtype)

    head = model.lm_head
    if head.weight.data_ptr() == inner.embed_tokens.weight.data_ptr():    # tied: the head gets its own copy
        head.weight = torch.nn.Parameter(inner.embed_tokens.weight.detach().clone())
        model.config.tie_word_embeddings = False
    fold(inner.norm, [head])
    reads(head)
    inner.embed_tokens.weight.data = (inner.embed_tokens.weight.double() @ q).to(inner.embed_tokens.weight.dtype)
    for block in inner.layers:
        att, mlp = block.self_attn, block.mlp
        fold(block.input_layernorm, [att.q_proj, att.k_proj, att.v_proj])
        fold(block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for lin in (att.q_proj, att.k_proj, att.v_proj, mlp.gate_proj, mlp.up_proj):
            reads(lin)
        writes(att.o_proj)
        writes(mlp.down_proj)
    return q
