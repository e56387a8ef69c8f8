"""Stage 2, the ``fit`` verb: every (model, layer, head) of a cache into a results folder."""
