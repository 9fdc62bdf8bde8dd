"""The data engine: the step protocol, and the readers that turn sources into documents. No torch."""
