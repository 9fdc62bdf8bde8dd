"""The one architecture (``gpt``), its config (``config``, torch-free), its fused loss head
(``head_loss``) and the model directory (``io``). Import the submodule you need: this package imports
nothing, so ``gristmill.model.config`` loads without torch."""
