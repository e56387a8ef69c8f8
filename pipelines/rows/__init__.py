"""Stage 2, what a head is fitted on: a layer's usable rows, their views, rows streamed."""
