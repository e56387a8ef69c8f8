"""Embeddings out to the retrieval tools and back in: export, embedding-reader, autofaiss, import.

The cache has a failed row and a removed row, which an export leaves out: it holds the
usable rows only, in the cache's row order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _workers import make_images, one_torch_thread, run_options

import pipelines
from featurecache import extract, open_cache
from featurecache.app.cli import main
from featurecache.cache import export_embeddings, import_embeddings
from featurecache.core._validation import ParameterError
from featurecache.exceptions import InvalidArgumentError, UnknownNameError

ARGS = dict(model="resnet18", weights="none", layers=["layer3", "embedding"], image_size=32,
            dtype="float32")  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A grown cache of 30 images: one unreadable (failed), one removed since."""
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    make_images(data / "train", n_per_class=10)
    make_images(data / "test", n_per_class=5, seed=1)
    (data / "train" / "ant" / "zz-broken.png").write_bytes(b"not a png")
    with one_torch_thread():
        extract(data, root / "c.h5", **ARGS, options=run_options(shard_size=8))
        (data / "train" / "bee" / "03.png").unlink()
        extract(data, root / "c.h5", **ARGS, options=run_options(shard_size=8))
    return root / "c.h5"


def _usable(cache: Path, layer: str = "embedding"):
    reader = open_cache(cache)
    X, rows = reader.load_rows("resnet18", layer)
    return reader, X, rows


def test_embedding_reader_reads_back_the_usable_rows_in_order(cache, tmp_path):
    from embedding_reader import EmbeddingReader

    reader, X, rows = _usable(cache)
    assert len(reader.ids) == 31 and len(rows) == 29  # one failed, one removed
    result = export_embeddings(cache, "resnet18", "embedding", tmp_path / "out", rows_per_part=8)
    assert (result.n_rows, result.n_parts) == (29, 4)
    assert (
        sorted(p.name for p in (tmp_path / "out" / "img_emb").iterdir())[-1] == "img_emb_0003.npy"
    )
    embeddings = EmbeddingReader(
        str(tmp_path / "out" / "img_emb"), file_format="parquet_npy",
        metadata_folder=str(tmp_path / "out" / "metadata"), meta_columns=["id", "label", "split"],
    )  # fmt: skip
    assert (embeddings.count, embeddings.dimension) == (29, X.shape[1])
    got, meta = zip(
        *embeddings(batch_size=7, start=0, end=embeddings.count, show_progress=False), strict=True
    )
    got, meta = np.concatenate(got), pd.concat(meta)
    assert got.tobytes() == X.tobytes()
    assert meta["id"].tolist() == reader.ids[rows].tolist()
    assert meta["label"].tolist() == [reader.class_names[y] for y in reader.labels[rows]]
    assert meta["split"].tolist() == reader.splits[rows].tolist()
    provenance = json.loads(pq.read_schema(tmp_path / "out/metadata/metadata_0000.parquet")
                            .metadata[b"featurecache"])  # fmt: skip
    assert provenance["model"] == "resnet18" and provenance["layer"] == "embedding"
    assert provenance["config"]["backbone"] == "resnet18" and provenance["class_names"] == [
        "ant",
        "bee",
    ]


def test_the_parquet_format_reads_back_the_same(cache, tmp_path):
    from embedding_reader import EmbeddingReader

    reader, X, rows = _usable(cache, "layer3")
    export_embeddings(cache, "resnet18", "layer3", tmp_path / "out", format="parquet",
                      rows_per_part=10)  # fmt: skip
    assert not (tmp_path / "out" / "metadata").exists()
    embeddings = EmbeddingReader(str(tmp_path / "out" / "img_emb"), file_format="parquet",
                                 embedding_column="embedding", meta_columns=["id"])  # fmt: skip
    got, meta = zip(
        *embeddings(batch_size=100, start=0, end=embeddings.count, show_progress=False), strict=True
    )
    assert np.concatenate(got).tobytes() == X.tobytes()
    assert pd.concat(meta)["id"].tolist() == reader.ids[rows].tolist()


def test_autofaiss_indexes_the_export_and_a_cached_row_finds_itself(cache, tmp_path):
    import faiss
    from autofaiss.external.quantize import Quantizer

    _, X, _ = _usable(cache)
    export_embeddings(cache, "resnet18", "embedding", tmp_path / "out")
    index_path = Quantizer().quantize(
        embeddings_path=str(tmp_path / "out" / "img_emb"), output_path=str(tmp_path / "index"),
        max_index_memory_usage="64MB", current_memory_available="512MB", metric_type="l2",
        nb_cores=1,
    )  # fmt: skip
    index = faiss.read_index(index_path)
    assert index.ntotal == len(X)
    for row in (0, 11, len(X) - 1):
        _, found = index.search(X[row : row + 1], 1)
        assert found[0, 0] == row


def test_import_of_the_export_then_fit_gives_the_same_results(cache, tmp_path):
    export_embeddings(cache, "resnet18", "embedding", tmp_path / "out", rows_per_part=6)
    imported = import_embeddings(tmp_path / "out", tmp_path / "imported.h5", shard_size=5)
    original, again = open_cache(cache), open_cache(imported)
    assert again.entries[0].n_ok == 29 and again.models == ["resnet18"]
    settings = dict(models=["resnet18"], layers=["embedding"], heads=["logreg", "knn"], cv=3)
    want = pipelines.fit(original, tmp_path / "fit-original", **settings)
    got = pipelines.fit(again, tmp_path / "fit-imported", **settings)
    scores = ["model", "layer", "head", "params", "cv_mean", "cv_std", "test_accuracy",
              "test_balanced_accuracy", "test_macro_f1", "n_train", "n_val", "n_test", "n_features"]  # fmt: skip
    assert len(want) == 2 and want["n_train"].iloc[0] == 19
    pd.testing.assert_frame_equal(got[scores], want[scores])


def test_the_command_line_exports_and_imports(cache, tmp_path, capsys):
    code = main(["export", str(cache), "--model", "resnet18", "--layer", "embedding",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out == (
        f"exported 29 rows of resnet18/embedding (512 features) in 1 part -> {tmp_path / 'out'}\n"
    )
    code = main(["import", str(tmp_path / "out"), "--cache", str(tmp_path / "new.h5")])
    assert code == 0
    assert (
        capsys.readouterr().out
        == f"imported 29 rows of resnet18/embedding -> {tmp_path / 'new.h5'}\n"
    )
    _, X, _ = _usable(cache)
    assert open_cache(tmp_path / "new.h5").load("resnet18", "embedding")[0].tobytes() == X.tobytes()


def test_bad_export_arguments_fail_in_one_line(cache, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    with pytest.raises(InvalidArgumentError, match=r"^out must be a new or empty folder; .* is a "
                       r"folder that is not empty; pass another folder\.$"):  # fmt: skip
        export_embeddings(cache, "resnet18", "embedding", tmp_path / "full")
    with pytest.raises(
        UnknownNameError, match=r"layer 'embeding' of model 'resnet18' .* Did you mean 'embedding'"
    ):
        export_embeddings(cache, "resnet18", "embeding", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["import", str(tmp_path / "full"), "--cache", str(tmp_path / "n.h5")]) == 2
    assert capsys.readouterr().err == (
        f"featurecache: error: {str(tmp_path / 'full')!r} holds no embeddings; expected "
        "img_emb/*.npy with metadata/*.parquet, or img_emb/*.parquet with an embedding column.\n"
    )


def _elsewhere(folder: Path) -> np.ndarray:
    """Embeddings as clip-retrieval writes them: no provenance, ``image_path`` as the id."""
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    X = np.random.default_rng(0).normal(size=(12, 6)).astype(np.float32)
    for part, rows in enumerate((range(0, 7), range(7, 12))):
        np.save(folder / "img_emb" / f"img_emb_{part}.npy", X[list(rows)])
        pd.DataFrame({
            "image_path": [f"img/{i:03d}.jpg" for i in rows],
            "label": ["cat" if i % 2 else "dog" for i in rows],
            "split": ["test" if i >= 9 else "train" for i in rows],
        }).to_parquet(folder / "metadata" / f"metadata_{part}.parquet")  # fmt: skip
    return X


def test_embeddings_from_elsewhere_need_a_declared_config(tmp_path):
    from featurecache.cache import FeatureConfig

    X = _elsewhere(tmp_path / "emb")
    with pytest.raises(ParameterError, match=r"^The 'config' parameter of import_embeddings must "
                       r"be the FeatureConfig of embeddings that do not record one\. Got None "
                       r"instead\. Declare what computed them"):  # fmt: skip
        import_embeddings(tmp_path / "emb", tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()
    config = FeatureConfig(
        backbone="open_clip:ViT-B-32/openai", weights_sha256="0" * 64,
        preprocessing={"crop_size": 224}, pooling="cls", dtype="float32",
        compute_dtype="float16",
    )  # fmt: skip
    import_embeddings(tmp_path / "emb", tmp_path / "c.h5", config=config, model="clip")
    cache = open_cache(tmp_path / "c.h5")
    got, y, ids = cache.load("clip", "embedding")
    assert got.tobytes() == X.tobytes() and ids.tolist()[:2] == ["img/000.jpg", "img/001.jpg"]
    assert cache.class_names == ["cat", "dog"] and y.tolist()[:2] == [1, 0]
    assert cache.splits.tolist().count("test") == 3
    assert cache.entry("clip", "embedding").provenance["backbone"] == "open_clip:ViT-B-32/openai"


def test_a_float16_layer_exports_in_float16(tmp_path):
    data = make_images(tmp_path / "data", n_per_class=3)
    with one_torch_thread():
        extract(data, tmp_path / "h.h5", **{**ARGS, "layers": ["embedding"]},
                store_dtype="float16", options=run_options())  # fmt: skip
    export_embeddings(tmp_path / "h.h5", "resnet18", "embedding", tmp_path / "out")
    saved = np.load(tmp_path / "out" / "img_emb" / "img_emb_0000.npy")
    X, _ = open_cache(tmp_path / "h.h5").load_rows("resnet18", "embedding")
    assert saved.dtype == np.float16 and np.array_equal(saved.astype(np.float32), X)
