"""The stages, in the order a run takes them: thin adapters from a stage context and config to library
calls. Each module defines ``STAGE``; this list is the one registry (the runner, the CLI, the recipe and
the report all read it). Adding a stage: write its module, add it here."""

from gristmill.stages import (
          base,
          collect,
          evaluate,
          export,
          finetune,
          prepare,
          report,
          synth,
          tokenize,
          train,
)

# base (an import, needing nothing) comes before synth, whose teacher may be the imported model
STAGES = (collect.STAGE, prepare.STAGE, base.STAGE, synth.STAGE, tokenize.STAGE, train.STAGE, finetune.STAGE,
          evaluate.STAGE, export.STAGE, report.STAGE)
STAGE_NAMES = tuple(s.name for s in STAGES)
