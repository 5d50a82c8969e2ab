"""Triton kernels for :func:`megajepa.ops.cosine.fused_cosine_loss` (placeholder: torch)."""
from megajepa.ops.cosine import cosine_loss_reference


def cosine_loss_triton(hidden, pred_index, target_index, *, stopgrad_target=False):
    return cosine_loss_reference(hidden, pred_index, target_index, stopgrad_target=stopgrad_target)
