"""What both importers share: the ``ModelConfig`` of a Llama model, the ``GPT`` filled with its weights,
and the model directory they are saved as.

An imported model directory is an ordinary one (``model.safetensors``, ``config.json``,
``tokenizer.json``) plus ``import.json``, which keeps what Gristmill's own files have no place for: the
model's chat template, its special token ids and where it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from gristmill.errors import InputError

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

    from gristmill.model.config import ModelConfig
    from gristmill.model.gpt import GPT

IMPORT_FILE = "import.json"
"""Beside ``config.json`` in an imported model directory: chat template, special ids, source."""


def llama_config(source: Path, *, vocab_size: int, context_length: int, n_layer: int, n_head: int,
                 n_kv_head: int, n_embd: int, mlp_hidden: int, rope_theta: float, norm_eps: float,
                 tie_embeddings: bool) -> ModelConfig:
    """The ``ModelConfig`` that makes ``GPT`` compute what a Llama model with these sizes computes.

    Soft-capping is off and dropout zero because Llama has neither; ``block_size`` is the context length
    the model was trained for. ``source`` names the file in the error if the sizes do not fit ``GPT``.
    """
    from gristmill.model.config import ModelConfig

    try:
        return ModelConfig(
            vocab_size=vocab_size, block_size=context_length, n_layer=n_layer, n_head=n_head,
            n_kv_head=n_kv_head, n_embd=n_embd, mlp_hidden=mlp_hidden, dropout=0.0, attn_dropout=0.0,
            embd_dropout=0.0, tie_embeddings=tie_embeddings, qk_norm=False, logit_softcap=None,
            rope_theta=rope_theta, norm_eps=norm_eps,
        )
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise InputError(f"{source} has sizes Gristmill's model cannot take "
                         f"({str(e).splitlines()[-1].strip()}); only standard Llama shapes are supported") from e


def build_model(cfg: ModelConfig, state: dict[str, torch.Tensor], source: Path) -> GPT:
    """A ``GPT`` (eval mode, float32, CPU) holding ``state``, whose keys are Gristmill names.

    Every weight must be present with the right shape and nothing else may be: a weight left at its
    random init would give a model that runs and talks nonsense.
    """
    from gristmill.model.gpt import GPT

    model = GPT(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    if missing:
        raise InputError(f"{source} lacks the weight {missing[0]} (and {len(missing) - 1} more) that a "
                         f"Llama model with this config needs; is the file complete?")
    for k, v in state.items():
        if k not in expected:
            raise InputError(f"{source} has a weight Gristmill's model has no place for ({k}); only plain "
                             f"Llama models (no biases, no extra norms) are supported")
        if tuple(v.shape) != expected[k]:
            raise InputError(f"{source}: weight {k} has shape {tuple(v.shape)} but the config implies "
                             f"{expected[k]}; the metadata and the tensors disagree")
    model.load_state_dict(state, strict=True, assign=True)  # assign: no second 4-bytes-per-weight copy
    return model.eval()


def save_imported(model_dir: Path, model: GPT, tokenizer: Tokenizer, info: dict[str, Any]) -> None:
    """Write an imported model as a Gristmill model directory, with ``info`` as ``import.json``.

    ``load_model`` reads the result unchanged. Each file is written atomically; ``import.json`` goes last,
    so its presence means the directory is complete.
    """
    from gristmill.core.workspace import atomic_open, write_json
    from gristmill.model.io import save_model

    model_dir = Path(model_dir)
    save_model(model_dir, model, tokenizer_path=None)
    with atomic_open(model_dir / "tokenizer.json", "w", encoding="utf-8") as f:
        f.write(tokenizer.to_str())
    write_json(model_dir / IMPORT_FILE, info)
