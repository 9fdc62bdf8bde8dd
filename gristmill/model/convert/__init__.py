"""Convert between Gristmill's model directory and the files other tools load: Llama-architecture models
in both directions.

Import: ``gguf.import_gguf`` reads a llama.cpp GGUF file (any quantisation the ``gguf`` package can
dequantise), ``hf.import_hf`` a Hugging Face transformers folder; both return ``(GPT, tokenizers.Tokenizer,
info)``, and ``imported.save_imported`` writes them as an ordinary model directory that
``gristmill.model.io`` loads unchanged.

Export: ``exported.load_source`` reads a model directory and refuses what Llama cannot express;
``export_hf.export_hf`` writes a transformers ``LlamaForCausalLM`` folder, ``export_gguf.export_gguf`` a
llama.cpp GGUF file, ``card.model_card`` the model card from a run's manifests, and ``parity`` measures how
closely the exported files reproduce Gristmill's logits. ``config.ExportConfig`` is the export stage's
section of a recipe.

``keys`` holds the weight names in all three spellings, shared by both directions. Everything heavy
(torch, gguf, transformers, llama_cpp) is imported inside the functions, so this package imports nothing
heavy.
"""
