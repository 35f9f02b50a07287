"""The quantization grid shared by every quantizer and by the MLWQ tensor format.

A group of GROUP_SIZE input columns of one output row is quantized asymmetrically:
    q = clamp(round(w / d) + zero, 0, 2^bits - 1),   w_hat = d * (q - zero)
with d on the format's log grid (exact float32 values 2^(k/8)) and zero a small integer, exactly
as the GGUF block header codes them (ggml_patch/FORMAT.md), so that the PyTorch fake-quant weights
equal the C dequantization bit for bit: both compute d * float32(q - zero).

The grid follows the file format the weights are for (use_format): format 3 (the default) stores
a scale as whole half octaves below its row's scale and a 4-bit zero point, so d = 2^(k/2) and
zero <= 15; format 2 stores an 8-bit scale code (2^(k/8)) and a 5-bit zero point.
"""

from __future__ import annotations

import torch

from exporters.mlwq_format import SCALE_EXP0, SCALE_STEPS_PER_OCTAVE, SCALE_TABLE, V3_SCALE_STEP, V3_ZERO_MAX, ZERO_MAX as V2_ZERO_MAX

GROUP_SIZE = 64          # columns per group = one block of the MLWQ ggml type
MAX_BITS = 8             # widths 1..8 fit in the block header
_MIN_SCALE = float(SCALE_TABLE[0])   # the grid's smallest scale: keeps d > 0
_SCALE_TABLE = torch.from_numpy(SCALE_TABLE.copy())

# (scale steps per octave, largest zero point, min/max fits round the scale up) of each file
# format's block header. Format 3's half-octave steps: a fit rounded to the nearest step would
# clip up to 19 % of a group's range, at every width, so its fits take the smallest scale that
# holds the (TQP-clipped) range and clipping stays the clipping factors' choice.
FORMAT_GRID = {3: (SCALE_STEPS_PER_OCTAVE // V3_SCALE_STEP, V3_ZERO_MAX, True),
               2: (SCALE_STEPS_PER_OCTAVE, V2_ZERO_MAX, False)}
DEFAULT_FORMAT = 3
STEPS_PER_OCTAVE, ZERO_MAX, FIT_ROUNDS_UP = FORMAT_GRID[DEFAULT_FORMAT]


def use_format(version: int) -> None:
    """Quantize onto the grid of this file format's block header (the process-wide grid)."""
    global STEPS_PER_OCTAVE, ZERO_MAX, FIT_ROUNDS_UP
    if version not in FORMAT_GRID:
        raise ValueError(f"MLWQ file format {version} has no quantization grid; choose one of {sorted(FORMAT_GRID)}")
    STEPS_PER_OCTAVE, ZERO_MAX, FIT_ROUNDS_UP = FORMAT_GRID[version]


def fit_scale_zero(w: torch.Tensor, bits: torch.Tensor | int,
                   gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None):
    """Min/max parameters of each row of w [..., rows, cols], optionally clipped (TQP, eq. 6).

    The range always contains 0 (GPTQ's convention); gamma and beta in (0, 1] shrink the upper
    and lower end. bits may be an int or a tensor broadcastable to w's leading dims + rows.
    Returns (d, zero) as float32 tensors of shape [..., rows]; d is already on the scale grid (round_scale).
    """
    return scale_zero_of_range(w.amax(dim=-1), w.amin(dim=-1), bits, gamma, beta)


def scale_zero_of_range(wmax: torch.Tensor, wmin: torch.Tensor, bits, gamma=None, beta=None):
    """fit_scale_zero from each row's max and min (gamma, beta may add leading candidate dims)."""
    wmax = wmax.clamp(min=0)
    wmin = wmin.clamp(max=0)
    if gamma is not None:
        wmax = torch.broadcast_to(wmax, torch.broadcast_shapes(wmax.shape, gamma.shape))
    if beta is not None:
        wmin = torch.broadcast_to(wmin, torch.broadcast_shapes(wmin.shape, beta.shape))
    qmax = maxq(bits, wmax)
    if gamma is not None:
        wmax = wmax * gamma
    if beta is not None:
        wmin = wmin * beta
    d = ((wmax - wmin) / qmax).clamp(min=_MIN_SCALE)
    d = round_scale(d, up=FIT_ROUNDS_UP).clamp(min=_MIN_SCALE)
    zero = torch.clamp(torch.round(-wmin / d), torch.zeros_like(qmax), qmax.clamp(max=ZERO_MAX))
    return d, zero


def round_scale(d: torch.Tensor, up: bool = False) -> torch.Tensor:
    """The scale as the file stores it (the nearest 2^(k/8), or 2^(k/2) for format 3, in log terms;
    up: the smallest one >= d), clamped to the range of the scale codes, in float32; every
    quantizer rounds through here."""
    step = SCALE_STEPS_PER_OCTAVE // STEPS_PER_OCTAVE          # codes of the 8-step table per grid step
    x = torch.log2(d.float().clamp(min=_MIN_SCALE)) * STEPS_PER_OCTAVE
    k = torch.ceil(x - 1e-4) if up else torch.round(x)         # a grid value stays itself
    s = (k * step - SCALE_EXP0 * SCALE_STEPS_PER_OCTAVE).clamp(0, 255 - 255 % step).to(torch.long)
    return _SCALE_TABLE.to(d.device)[s]


def max_zero(bits) -> float:
    """Largest zero point the header holds for this width: 2^bits - 1, at most ZERO_MAX."""
    return float(min(2 ** int(bits) - 1, ZERO_MAX))


def quantize_codes(w: torch.Tensor, d: torch.Tensor, zero: torch.Tensor, bits) -> torch.Tensor:
    """Integer codes (as float) of w [..., rows, cols] with per-row d, zero [..., rows]."""
    qmax = maxq(bits, d)
    q = torch.round(w / d.unsqueeze(-1)) + zero.unsqueeze(-1)
    return torch.minimum(q.clamp(min=0), qmax.unsqueeze(-1))


def clamp_codes_(q: torch.Tensor, qmax) -> torch.Tensor:
    """q.clamp_(0, qmax) in place; qmax a number, or a tensor broadcasting to q (one width per layer
    of a batch: minimum() instead of a clamp to tensor bounds, which is far slower on a CPU)."""
    if torch.is_tensor(qmax):
        return torch.minimum(q.clamp_(min=0), qmax, out=q)
    return q.clamp_(0, qmax)


def dequantize(q: torch.Tensor, d: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """float32(d) * (q - zero): the one dequantization formula (FORMAT.md)."""
    return d.unsqueeze(-1) * (q - zero.unsqueeze(-1))


def fake_quant(w: torch.Tensor, bits, gamma=None, beta=None) -> torch.Tensor:
    d, zero = fit_scale_zero(w, bits, gamma, beta)
    return dequantize(quantize_codes(w, d, zero, bits), d, zero)


def maxq(bits, like: torch.Tensor) -> torch.Tensor:
    """2^bits - 1 broadcast to the shape of `like` (per-row parameters)."""
    if not torch.is_tensor(bits):        # a fill, not a host-to-device copy
        return torch.full(like.shape, float(2 ** int(bits) - 1), device=like.device)
    b = bits.to(device=like.device, dtype=torch.float32)
    return torch.broadcast_to(2.0 ** b - 1, like.shape)
