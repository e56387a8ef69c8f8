"""Stage 2, the results folder: its schema, every write, the one ranking, and feature sets."""
