"""megajepa data tools: embedded NL-RX generator, the real NL-RX files, tokenizer training,
preprocessing into a memory-mapped store.  Commands:
``python -m data_tools.<generate|get_nlrx|train_tokenizer|preprocess|compare_nlrx>`` (see docs/data.md).
"""
