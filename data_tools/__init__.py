"""megajepa data tools: embedded NL-RX generator, tokenizer training, preprocessing into a
memory-mapped store.  Commands: ``python -m data_tools.<generate|train_tokenizer|preprocess>``.
"""
