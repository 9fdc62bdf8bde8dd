"""The special tokens every Gristmill tokenizer has, at fixed ids.

The chat template, the tokenizer, the model and the server rely on these ids: ``<|endoftext|>`` = 0
separates documents in token files, ``<|im_start|>`` = 1 and ``<|im_end|>`` = 2 frame chat turns,
``<|pad|>`` = 3 pads batches.
"""

SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
"""Special tokens in id order: their ids are their positions here."""
EOT_ID, IM_START_ID, IM_END_ID, PAD_ID = range(len(SPECIAL_TOKENS))
IGNORE_INDEX = -100
"""Target of a token that carries no loss (padding, prompts): the model's cross-entropy skips it."""
