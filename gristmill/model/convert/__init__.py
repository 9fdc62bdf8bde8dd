"""Import pretrained Llama-architecture models into Gristmill's own model and tokenizer.

``gguf.import_gguf`` reads a llama.cpp GGUF file (any quantisation the ``gguf`` package can dequantise),
``hf.import_hf`` a Hugging Face transformers folder; both return ``(GPT, tokenizers.Tokenizer, info)``,
and ``imported.save_imported`` writes them as an ordinary model directory that ``gristmill.model.io``
loads unchanged. ``keys`` holds the weight names in all three spellings, shared with export. The
``gguf`` and ``transformers``-side readers are imported lazily, so this package imports nothing heavy.
"""
