"""synth: synthetic instruction data in chat format, made from the prepared documents.

Reads ``prepare/{train,val}.jsonl`` and writes ``train.jsonl`` (from train documents only),
``val.jsonl`` (from val documents only, so nothing leaks into evaluation) and ``rejected.jsonl``
(``{"split", "reason", "task", "messages", "source_ids"}``). Each record is
``{"id", "task", "messages", "source_ids"}`` (docs/contracts.md).

Every answer is text taken from the document itself (a true continuation, an article's lead, a title,
a speaker's name), never invented. Task generators live in :mod:`gristmill.synth.tasks`; the checks in
:mod:`gristmill.synth.filters`. Output is a function of the documents, the config and the run seed:
the same inputs give the same bytes.
"""

from gristmill.synth.config import SynthConfig
from gristmill.synth.stage import run_synth, synthesize
from gristmill.synth.tasks import TASKS, Draft, TaskContext, task

__all__ = ["TASKS", "Draft", "SynthConfig", "TaskContext", "run_synth", "synthesize", "task"]
