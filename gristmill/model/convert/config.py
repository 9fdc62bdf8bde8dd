"""The export stage's config (pydantic only, no torch): which model, which formats, the model card's words."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gristmill.core.config import Config

ExportFormat = Literal["hf", "gguf"]
GgufDtype = Literal["f32", "f16", "q8_0"]
HfDtype = Literal["float32", "float16", "bfloat16"]


class ExportConfig(Config):
    """Write the run's model as a Hugging Face transformers folder and/or a llama.cpp GGUF file, with a
    model card (``README.md``) built from the run's manifests."""

    formats: list[ExportFormat] = ["hf", "gguf"]
    """What to write: ``hf`` (``hf/``: LlamaForCausalLM safetensors, tokenizer, chat template) and/or ``gguf``
    (``model.gguf`` for llama.cpp, Ollama, LM Studio); ``[]`` skips the stage."""
    model: Literal["auto", "finetune", "train", "base"] = "auto"
    """Which model of the run: ``auto`` takes the last one made (finetune, else train, else the imported base
    model); the others name the stage whose ``model/`` to export."""
    gguf_dtype: GgufDtype = "f16"
    """Tensor type in the GGUF file: ``f32`` (exact), ``f16`` (half the size, each weight rounded to 11 significant bits) or
    ``q8_0`` (about a quarter of f32; 8-bit blocks of 32, matrices whose rows are not a multiple of 32 stay
    f16). Norm weights are always f32, as llama.cpp expects."""
    hf_dtype: HfDtype = "float32"
    """Weight dtype of the transformers folder (the model computes in whatever dtype it is loaded with)."""
    allow_softcap_drop: bool = True
    """Export a model that soft-caps its logits (``train.model.logit_softcap``, on by default) although
    Llama has no soft-cap: the exported model's logits are the uncapped ones. Greedy decoding is unchanged
    (tanh is monotonic); sampled text differs slightly (the uncapped distribution is sharper), and the card
    says so with the measured difference. False: such a model is refused."""
    check_tokens: int = Field(32, ge=0, le=4096)
    """Tokens of a fixed chat text scored by Gristmill and by the exported files, read by transformers and
    llama-cpp-python when installed (else by Gristmill's importers), to record the largest logit difference
    and how often the most likely next token agrees; 0 skips the check."""
    name: str | None = Field(None, min_length=1)
    """Model name in the card and the GGUF metadata (None: ``<run name>-<stage>``, or the imported model's
    name)."""
    license: str | None = Field(None, min_length=1)
    """Licence of the weights, for the card's header and the GGUF metadata (None: the card says it is not
    stated and lists the training data's licences)."""
    intended_use: str = ("Research and education: studying how the data, the tokenizer and the training "
                         "settings of a small language model shape what it writes.")
    """The card's "Intended use" paragraph."""
    limitations: str = ("A small model trained on little text: it writes fluent-looking but often wrong or "
                        "meaningless text, repeats its training data, and must not be relied on for facts, "
                        "advice or any decision about people.")
    """The card's "Limitations" paragraph (the card adds what it knows: context length, uncapped logits,
    data sources)."""
