"""The run report: Markdown pieces (``markdown``) and SVG charts (``svg``), with which each stage writes its
own section; the HTML page (``html``) with matplotlib plots (``plots``) and a reading of the figures
(``reading``); the comparison of models across runs (``compare``); the readers of run files they share
(``runfiles``). Nothing here recomputes a metric."""
