"""`featurecache fit --backend dask` writes the results loky writes.

A local Dask cluster on loopback (2 worker processes, no dashboard) lives for this module only.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from _synthetic import write_cache

from featurecache.app.cli import main

distributed = pytest.importorskip(
    "distributed", reason="Dask is not installed: pip install 'featurecache[dask]'"
)

pytestmark = [pytest.mark.dask, pytest.mark.slow]

FIT = ["--heads", "logreg,linsvm", "--cv", "3", "--jobs", "2", "--seed", "0"]


@pytest.fixture(scope="module")
def dask_cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        lifetime="600s",  # workers stop by themselves even if this process is killed
    ) as cluster:
        yield cluster


def results(out: Path) -> tuple[pd.DataFrame, dict[str, bytes]]:
    """``results.csv`` without its timings, and every prediction file's bytes."""
    table = pd.read_csv(out / "results.csv").drop(
        columns=["fit_seconds", "predict_seconds_per_1000"]
    )
    predictions = {
        str(path.relative_to(out)): path.read_bytes()
        for path in sorted((out / "predictions").rglob("*.csv"))
    }
    return table, predictions


def test_fit_on_dask_equals_loky(dask_cluster, tmp_path, capsys):
    cache = write_cache(tmp_path / "cache.h5")
    assert main(["fit", str(cache), "--out", str(tmp_path / "loky"), *FIT]) == 0
    before = dask_cluster.scheduler.transition_counter
    dask = ["--backend", "dask", "--address", dask_cluster.scheduler_address]
    assert main(["fit", str(cache), "--out", str(tmp_path / "dask"), *FIT, *dask]) == 0
    assert dask_cluster.scheduler.transition_counter > before  # the work ran on the cluster

    loky_table, loky_predictions = results(tmp_path / "loky")
    dask_table, dask_predictions = results(tmp_path / "dask")
    assert len(loky_table) == 6 and len(loky_predictions) == 6
    pd.testing.assert_frame_equal(dask_table, loky_table, check_exact=True)
    assert dask_predictions == loky_predictions
    assert "6 combinations" in capsys.readouterr().out
