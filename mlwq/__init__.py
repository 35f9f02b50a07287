"""MLWQ: Multi-Level Weight Quantization (BPLL + MQSA + TQP) for small language models."""

__version__ = "0.1.0"
