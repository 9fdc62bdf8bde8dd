"""A holding area for documents: the steps that must see a whole stream before they judge any of it
(near-duplicate removal, decontamination against the validation split) park documents here, and read them
back in the same order.

Documents are held in memory up to ``memory_chars`` characters of text; past that, all of them go to an
anonymous temporary file (it has no name to clean up and disappears when closed, or when the process
dies) and so do the ones after, so memory stays bounded whatever the size of the stream, and a small
stream costs nothing. On disk a document is pickled as a tuple of its fields, which gives back exactly
the values written, meta included: a step's output does not depend on whether it spilled. The file is
private to the process that writes it, which is the only one that reads it back.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import IO

from gristmill.formats.document import Document, Provenance

MEMORY_CHARS = 16_000_000
"""Characters of text held in memory before the documents spill to disk (about 100 MB of Python objects
with their metadata)."""
_PROVENANCE = tuple(f.name for f in fields(Provenance))


class DocumentSpool:
    """Append documents, then read them back once, in order. ``directory``: where the scratch file goes
    if the documents spill (the stage's work folder; None: the system's temporary folder);
    ``memory_chars``: characters of text held in memory before they do (None: ``MEMORY_CHARS``; 0: every
    document goes to disk)."""

    def __init__(self, directory: Path | None = None, memory_chars: int | None = None) -> None:
        self.directory = directory
        self.memory_chars = MEMORY_CHARS if memory_chars is None else memory_chars
        self.count = 0
        self._held: list[Document | None] = []
        self._chars = 0
        self._file: IO[bytes] | None = None

    @property
    def spilled(self) -> bool:
        """Whether the documents went to disk."""
        return self._file is not None

    def add(self, doc: Document) -> None:
        self.count += 1
        if self._file is not None:
            self._dump(doc)
            return
        self._held.append(doc)
        self._chars += len(doc.text)
        if self._chars >= self.memory_chars:
            if self.directory is not None:
                self.directory.mkdir(parents=True, exist_ok=True)
            self._file = tempfile.TemporaryFile(dir=self.directory, prefix="spool-")
            for held in self._held:
                self._dump(held)
            self._held = []

    def _dump(self, doc: Document | None) -> None:
        assert doc is not None and self._file is not None
        p = doc.provenance
        # Plain tuples pickle several times faster than the slotted dataclasses.
        pickle.dump((doc.id, doc.text, doc.source, tuple(getattr(p, f) for f in _PROVENANCE), doc.meta),
                    self._file, protocol=pickle.HIGHEST_PROTOCOL)

    def __iter__(self) -> Iterator[Document]:
        """The documents in the order added, each let go once yielded; the file is closed (and gone)
        after the last one."""
        try:
            if self._file is None:
                held = self._held
                for i, doc in enumerate(held):
                    held[i] = None
                    assert doc is not None
                    yield doc
                return
            f = self._file
            f.flush()
            f.seek(0)
            for _ in range(self.count):
                doc_id, text, source, prov, meta = pickle.load(f)
                yield Document(id=doc_id, text=text, source=source, provenance=Provenance(*prov), meta=meta)
        finally:
            self.close()

    def close(self) -> None:
        self._held = []
        if self._file is not None:
            self._file.close()
