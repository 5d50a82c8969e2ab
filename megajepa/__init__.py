"""megajepa: LLM-JEPA (next-token + JEPA loss) in one forward pass over packed sequences.

Public API::

    from megajepa import Example, pack, forward
    batch = pack([Example("pair", [text_ids, code_ids])], seq_len=512, k=1,
                 pred_ids=[pred_id], pad_id=pad_id)
    out = forward(model, batch, lbd=1.0, gamma=1.0)   # out.loss, out.lm_loss, out.jepa_loss, out.cosine
"""
from megajepa.layout import ANSWER, IGNORE_INDEX, PRED, TEXT, Example, PackedBatch, pack

__all__ = ["Example", "PackedBatch", "pack", "forward", "ForwardOutput", "TEXT", "ANSWER",
           "PRED", "IGNORE_INDEX"]


def __getattr__(name):
    # The objective pulls in transformers; import it lazily so data tools stay light.
    if name in ("forward", "ForwardOutput"):
        from megajepa import objective
        return getattr(objective, name)
    raise AttributeError(f"module 'megajepa' has no attribute {name!r}")
