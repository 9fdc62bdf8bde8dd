"""The run report: Markdown pieces (``markdown``) and SVG charts (``svg``); each stage writes its own section."""
