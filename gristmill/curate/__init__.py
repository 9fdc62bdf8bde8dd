"""Curation steps: normalisers, length, language and quality filters, PII, deduplication, decontamination and
the split.

Each is a :class:`~gristmill.data.step.Step` whose typed config lives in its own module and is gathered into
one tagged union by :mod:`gristmill.curate.config` (``curate/kinds.py`` holds each kind of text's steps and
thresholds); :func:`gristmill.curate.build.build_steps` turns a prepare config into the step list,
:mod:`gristmill.curate.shard` is prepare's per-shard unit of work and :mod:`gristmill.curate.card` its data
card. Pure text in, a reason out: nothing here knows about stages, runs or torch.
"""
