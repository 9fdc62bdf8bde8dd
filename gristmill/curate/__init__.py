"""Curation steps: normalisers, quality filters, PII, deduplication and the split.

Each is a :class:`~gristmill.data.step.Step` with its own typed config in :mod:`gristmill.curate.config`;
:func:`gristmill.curate.build.build_steps` turns a prepare config into the step list. Pure text in, a
reason out: nothing here knows about stages, runs or torch.
"""
