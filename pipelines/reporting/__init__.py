"""Stage 2, the ``report`` verb: a results folder compared in report.md and report.html."""
