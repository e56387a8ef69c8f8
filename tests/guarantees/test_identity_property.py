"""Property: after any sequence of edits to a dataset, each followed by ``extract``, every usable
row of the cache holds the features of the file that has its id now, and the counts are true.

The edits: add, delete, edit in place (same size and mtime), swap two files, move across class
and split folders, relabel and re-split in the CSV manifest, copy, truncate and then repair.
The oracle is a reference cache of every image the test can write, extracted once: features
are a function of the content alone (one image per batch in both caches).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _workers import one_torch_thread, run_options
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from featurecache import extract, open_cache

pytestmark = pytest.mark.slow

ARGS = dict(model="resnet18", weights="none", layers=["embedding"], image_size=32,
            dtype="float32", options=run_options(shard_size=3, batch_size=1))  # fmt: skip
POOL = 10  # contents the test can write: seeds 0..9
CLASSES, SPLITS = ("cat", "dog"), ("train", "test")


def _write(path: Path, seed: int) -> None:
    """A BMP of the pool: every one is the same number of bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (36, 36, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="BMP")


def _extract(data, cache) -> None:
    with one_torch_thread():
        extract(data, cache, **ARGS)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict[int, bytes]:
    """Seed -> the features a fresh extraction computes for that image."""
    root = tmp_path_factory.mktemp("oracle")
    for seed in range(POOL):
        _write(root / "img" / CLASSES[seed % 2] / f"{seed}.bmp", seed)
    _extract(root / "img", root / "o.h5")
    X, _, ids = open_cache(root / "o.h5").load("resnet18", "embedding")
    return {int(Path(i).stem): x.tobytes() for i, x in zip(ids.tolist(), X, strict=True)}


class World:
    """The dataset as the test believes it is: file -> seed, and the manifest's overrides."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, int] = {}
        self.truncated: set[str] = set()
        self.label: dict[str, str] = {}
        self.split: dict[str, str] = {}
        self.count = 0
        for k, name in enumerate(CLASSES):  # anchors: never edited, so two classes stay labelled
            self.add(k, name, "train", anchor=True)
        for k in range(4):
            self.add(2 + k, CLASSES[k % 2], SPLITS[k // 2])

    def editable(self) -> list[str]:
        return sorted(f for f in self.files if not Path(f).name.startswith("anchor"))

    def path(self, name: str) -> Path:
        return self.root / name

    def add(self, seed: int, cls: str, split: str, anchor: bool = False) -> None:
        self.count += 1
        name = f"{split}/{cls}/{'anchor' if anchor else 'n'}{self.count}.bmp"
        _write(self.path(name), seed)
        self.files[name] = seed

    def apply(self, op: tuple) -> None:
        kind, a, b, c = op
        names = self.editable()
        if kind == "add" or not names:
            self.add(a % POOL, CLASSES[b % 2], SPLITS[c % 2])
            return
        name = names[a % len(names)]
        other = names[b % len(names)]
        if kind == "repair" and self.truncated:
            name = sorted(self.truncated)[a % len(self.truncated)]
        if kind == "delete":
            self.path(name).unlink()
            self._forget(name)
        elif kind == "edit":
            stat = os.stat(self.path(name))
            self.files[name] = (self.files[name] + 1 + c) % POOL
            _write(self.path(name), self.files[name])  # same size; mtime set back below
            os.utime(self.path(name), ns=(stat.st_atime_ns, stat.st_mtime_ns))
            self.truncated.discard(name)
        elif kind == "swap" and name != other:
            tmp = self.root / "swap.tmp"
            shutil.move(self.path(name), tmp)
            shutil.move(self.path(other), self.path(name))
            shutil.move(tmp, self.path(other))
            self.files[name], self.files[other] = self.files[other], self.files[name]
            held = {n: n in self.truncated for n in (name, other)}  # before the swap
            for one, two in ((name, other), (other, name)):
                self._carry(one, held[two])
        elif kind in ("move", "copy"):
            target = f"{SPLITS[c % 2]}/{CLASSES[b % 2]}/{kind}{self.count}-{Path(name).name}"
            self.count += 1
            self.path(target).parent.mkdir(parents=True, exist_ok=True)
            (shutil.move if kind == "move" else shutil.copy2)(self.path(name), self.path(target))
            self.files[target] = self.files[name]
            if name in self.truncated:
                self.truncated.add(target)
            if kind == "move":
                self._forget(name)
        elif kind == "relabel":
            self.label[name] = CLASSES[(CLASSES.index(self.expected_label(name)) + 1) % 2]
        elif kind == "resplit":
            self.split[name] = SPLITS[(SPLITS.index(self.expected_split(name)) + 1) % 2]
        elif kind == "truncate":
            self.path(name).write_bytes(self.path(name).read_bytes()[:10])
            self.truncated.add(name)
        elif kind == "repair" and name in self.truncated:
            _write(self.path(name), self.files[name])
            self.truncated.discard(name)

    def _carry(self, one: str, truncated: bool) -> None:
        """``one`` now holds bytes that were ``truncated`` or not (a swap moves truncation with
        the bytes)."""
        if truncated:
            self.truncated.add(one)
        else:
            self.truncated.discard(one)

    def _forget(self, name: str) -> None:
        for table in (self.files, self.label, self.split):
            table.pop(name, None)
        self.truncated.discard(name)

    def expected_label(self, name: str) -> str:
        return self.label.get(name, name.split("/")[1])

    def expected_split(self, name: str) -> str:
        return self.split.get(name, name.split("/")[0])

    def manifest(self) -> Path:
        lines = ["path,label,split"]
        lines += [
            f"{n},{self.expected_label(n)},{self.expected_split(n)}" for n in sorted(self.files)
        ]
        path = self.root / "manifest.csv"
        path.write_text("\n".join(lines) + "\n")
        return path


def _check(world: World, cache: Path, oracle: dict[int, bytes]) -> None:
    reader = open_cache(cache)
    X, y, ids = reader.load("resnet18", "embedding")
    readable = {n for n in world.files if n not in world.truncated}
    assert set(ids.tolist()) == readable
    for sample_id, x, label in zip(ids.tolist(), X, y, strict=True):
        assert x.tobytes() == oracle[world.files[sample_id]], sample_id
        assert reader.class_names[label] == world.expected_label(sample_id), sample_id
    live = ~reader.removed
    assert sorted(reader.ids[live].tolist()) == sorted(world.files)
    got = dict(zip(reader.ids[live].tolist(), reader.splits[live].tolist(), strict=True))
    assert got == {n: world.expected_split(n) for n in world.files}
    counts = reader.counts("resnet18", "embedding")
    for split in SPLITS:
        in_split = {n for n in world.files if world.expected_split(n) == split}
        found = counts.get(split, {"ok": 0, "failed": 0, "pending": 0})
        assert (found["ok"], found["failed"], found["pending"]) == (
            len(in_split - world.truncated), len(in_split & world.truncated), 0
        ), split  # fmt: skip
    assert {i for i, _ in reader.failures("resnet18")} == world.truncated & set(world.files)


OPS = st.tuples(
    st.sampled_from(
        ["add", "delete", "edit", "swap", "move", "relabel", "resplit", "copy", "truncate",
         "repair"]
    ),
    st.integers(0, 50), st.integers(0, 50), st.integers(0, 50),
)  # fmt: skip


# derandomize: the same generated edit sequences on every run, so CI never turns red by chance;
# explore more locally with --hypothesis-seed=random (or a number) and a larger max_examples.
@settings(max_examples=10, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(ops=st.lists(OPS, min_size=2, max_size=5))
def test_every_usable_row_equals_a_fresh_extraction_after_any_edits(oracle, ops):
    with tempfile.TemporaryDirectory() as folder:
        world = World(Path(folder) / "data")
        cache = Path(folder) / "c.h5"
        _extract(world.manifest(), cache)
        _check(world, cache, oracle)
        for op in ops:
            world.apply(op)
            _extract(world.manifest(), cache)
            _check(world, cache, oracle)
