"""The tokenizer library: byte-level BPE (``bpe``) and its config (``config``, no tokenizers import)."""
