"""Evaluation: generation metrics per task and NL-RX regex semantic equivalence.

Public API::

    from megajepa.eval import regex_equivalent, evaluate
    regex_equivalent(".*dog.*", "(.*dog.*)|(.*dog.*truck.*)")   # True
    metrics = evaluate(model, tokenizer, records, task="nlrx")  # {"exact": .., ...}

CLI: ``python -m megajepa.eval --model <hf_dir> --data <jsonl> --task nlrx --out <dir>``.
"""
from megajepa.eval.regex import (RegexError, RegexSyntaxError, RegexTooComplexError,
                                 regex_equivalent)

__all__ = ["regex_equivalent", "RegexError", "RegexSyntaxError", "RegexTooComplexError",
           "evaluate"]


def __getattr__(name):
    # evaluate pulls in torch/transformers; import lazily so the regex engine stays light.
    if name == "evaluate":
        from megajepa.eval.run import evaluate
        return evaluate
    raise AttributeError(f"module 'megajepa.eval' has no attribute {name!r}")
