"""``featurecache ls CACHE``: what a cache holds, as text or JSON."""

from __future__ import annotations

import json

from featurecache.app._argparse import add_command

__all__ = ["add_parser", "run", "views_text"]


def add_parser(sub) -> None:
    parser = add_command(
        sub, "ls", help="show what a cache holds: models, layers, shapes, status, provenance",
        description="Show what a cache holds: its samples per split and classes, then for each "
        "model its configuration and, per layer, the width, dtype and rows ok, failed and "
        "pending (an extraction still running or stopped), and the failed samples with reasons.",
    )  # fmt: skip
    parser.add_argument("cache", help="the CACHE.h5 index written by `featurecache extract`")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args) -> int:
    from pipelines import open_cache

    cache = open_cache(args.cache)
    entries = cache.entries  # read once: each listing of a folder cache reads its logs
    if args.json:
        print(json.dumps(_ls_record(cache, entries), default=str, indent=1))
    else:
        print("\n".join(_ls_lines(cache, entries)))
    return 0


_ENTRY_FIELDS = (
    "model", "layer", "n_features", "dtype", "n_ok", "n_failed", "n_pending", "n_removed",
    "n_stale", "depth",
)  # fmt: skip


def _ls_record(cache, entries) -> dict:
    """What `ls --json` prints: the samples, every (model, layer), classifiers and views."""
    from featurecache.cache import STATE_REMOVED, STATE_STALE

    return {
        "cache": str(cache.path),
        "n_samples": int((~cache.removed).sum()),
        "n_removed": int((cache.state == STATE_REMOVED).sum()),
        "n_stale": int((cache.state == STATE_STALE).sum()),
        "entries": [
            {
                **{k: getattr(e, k) for k in _ENTRY_FIELDS},
                "counts": cache.counts(e.model, e.layer),
                "provenance": e.provenance,
            }
            for e in entries
        ],
        "classifiers": {
            model: {
                kind: {
                    "layer": c.layer,
                    "n_classes": len(c.class_names),
                    "prompts": list(c.prompts),
                    "source": c.source,
                }
                for kind, c in cache.classifiers(model).items()
            }
            for model in cache.models
        },
        "views": {
            model: sets.to_dict()
            for model in cache.models
            if (sets := cache.views(model)) is not None
        },
    }


def _ls_lines(cache, entries) -> list[str]:
    """What `ls` prints: the samples, then each model with its layers and failures."""
    from featurecache.cache import STATE_REMOVED, STATE_STALE

    active = cache.splits[~cache.removed]
    splits = {name: int((active == name).sum()) for name in dict.fromkeys(active.tolist())}
    split_text = ", ".join(f"{name or '(none)'} {count}" for name, count in splits.items())
    retired = "".join(
        f", {n} {name}"
        for name, code in (("removed", STATE_REMOVED), ("stale", STATE_STALE))
        if (n := int((cache.state == code).sum()))
    )
    lines = [
        f"{cache.path}: {len(active)} samples ({split_text}){retired}, "
        f"{len(cache.class_names)} classes"
    ]
    for model in cache.models:
        lines += ["", *_model_lines(cache, model, [e for e in entries if e.model == model])]
    return lines


def _model_lines(cache, model: str, entries) -> list[str]:
    config = entries[0].provenance if entries else {}
    lines = [
        f"{model}: backbone {config.get('backbone', '?')}, weights {config.get('weights', '?')}, "
        f"pooling {config.get('pooling', '?')}, compute {config.get('compute_dtype', '?')}",
        f"  sha256 {str(config.get('weights_sha256', '?'))[:16]}…  "
        f"preprocessing {config.get('preprocessing', '?')}",
    ]
    if config.get("source"):
        revision = f" revision {config['revision']}" if config.get("revision") else ""
        lines.append(f"  source {config['source']} ({config.get('library') or '?'}){revision}")
    views = cache.views(model)
    if views is not None:
        lines.append(f"  {views_text(views)}")
    for kind, stored in cache.classifiers(model).items():
        prompts = f", {len(stored.prompts)} prompts" if stored.prompts else ""
        use = "predict --imagenet" if kind == "imagenet" else "fit --heads zeroshot"
        lines.append(
            f"  {kind} classifier: reads {stored.layer}, {len(stored.class_names)} classes"
            f"{prompts} (featurecache {use})"
        )
    header = ("layer", "features", "dtype", "ok", "failed", "pending")
    lines.append("  {:32s} {:>9s} {:8s} {:>7s} {:>7s} {:>8s}".format(*header))
    lines += [
        f"  {e.layer:32s} {e.n_features:9d} {e.dtype:8s} {e.n_ok:7d} {e.n_failed:7d} "
        f"{e.n_pending:8d}"
        for e in entries
    ]
    failures = cache.failures(model)
    if failures:
        lines.append(f"  failed samples ({len(failures)}):")
        lines += [f"    {sample_id}: {reason}" for sample_id, reason in failures]
    return lines


def views_text(sets) -> str:
    parts = []
    if sets.k:
        parts.append(f"views: {sets.k} per train and val row ({sets.augment})")
    if sets.tta_k:
        parts.append(f"test-time views: {sets.tta_k} per row ({sets.tta})")
    return "; ".join(parts)
