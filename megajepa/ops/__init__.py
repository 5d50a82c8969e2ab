"""Fused loss-head kernels (DESIGN.md section 5).

* :func:`cosine_loss` — JEPA ``mean(1 - cos)`` over gathered row pairs; Triton kernel
  (:func:`fused_cosine_loss`) with a pure PyTorch reference (:func:`cosine_loss_reference`).
* :func:`linear_cross_entropy` — LM-head projection + summed cross-entropy without
  ``[tokens, vocab]`` logits, with the model's own bias, logit scale and soft cap:
  liger-kernel on CUDA, chunked PyTorch elsewhere.
* :func:`stp_loss` — Semantic Tube Prediction: signed row gathers into span/rest embeddings,
  weighted ``1 - cos``; Triton kernels (:func:`fused_stp_loss`) with an eager reference.

Importing this package never imports triton or liger; they load when their path runs.
"""
from megajepa.ops.cosine import cosine_loss, cosine_loss_reference, fused_cosine_loss, triton_available
from megajepa.ops.cosine_eps import EPS as COSINE_EPS
from megajepa.ops.linear_ce import (
    DEFAULT_CHUNK_SIZE,
    chunked_linear_cross_entropy,
    linear_cross_entropy,
    linear_cross_entropy_reference,
    liger_available,
    transform_logits,
)
from megajepa.ops.stp import fused_stp_loss, stp_loss, stp_loss_reference

__all__ = [
    "COSINE_EPS",
    "DEFAULT_CHUNK_SIZE",
    "chunked_linear_cross_entropy",
    "cosine_loss",
    "cosine_loss_reference",
    "fused_cosine_loss",
    "fused_stp_loss",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
    "liger_available",
    "stp_loss",
    "stp_loss_reference",
    "transform_logits",
    "triton_available",
]
