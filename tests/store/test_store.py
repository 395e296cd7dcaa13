"""CovarianceStore on disk: round trip, atomicity, refusals."""

import json

import pytest
import torch

from svdadapt import CovarianceStore, SvdadaptError, collect_covariances
from svdadapt.assets import tiny_model
from svdadapt.fingerprint import weights_fingerprint

from ..helpers import padded_batches


@pytest.fixture(scope="module")
def store():
    return collect_covariances(tiny_model("llama"), padded_batches())


def test_round_trip_keeps_every_tensor_and_the_metadata(store, tmp_path):
    store.save(tmp_path / "s")
    loaded = CovarianceStore.load(tmp_path / "s")
    assert loaded.modules == store.modules
    assert loaded.num_tokens == store.num_tokens
    assert loaded.metadata["model"] == store.metadata["model"]
    for name in store.modules:
        assert torch.equal(loaded.covariance(name), store.covariance(name))
        assert torch.equal(loaded.mean_abs(name), store.mean_abs(name))
        assert loaded.covariance(name).dtype == torch.float32
    meta = json.loads((tmp_path / "s" / "store.json").read_text())
    assert meta["format"] == "svdadapt.covariance-store"
    assert set(meta["modules"]) == set(store.modules)


def test_save_leaves_no_partial_directory_behind(store, tmp_path, monkeypatch):
    import svdadapt.store as store_module

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "write_json", fail)
    with pytest.raises(OSError):
        store.save(tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_an_existing_store(store, tmp_path):
    store.save(tmp_path / "s")
    store.save(tmp_path / "s")
    assert CovarianceStore.load(tmp_path / "s").modules == store.modules


def test_load_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(SvdadaptError, match="not a covariance store"):
        CovarianceStore.load(tmp_path)
    (tmp_path / "store.json").write_text('{"format": "other"}')
    with pytest.raises(SvdadaptError, match="not a covariance store"):
        CovarianceStore.load(tmp_path)


def test_load_refuses_a_store_with_a_missing_shard(store, tmp_path):
    store.save(tmp_path / "s")
    next((tmp_path / "s").glob("*.safetensors")).unlink()
    with pytest.raises(SvdadaptError, match="missing"):
        CovarianceStore.load(tmp_path / "s")


def test_store_refuses_another_model_and_missing_layers(store):
    mine = store.metadata["model"]["fingerprint"]
    store.check_covers(mine, store.modules)
    other = weights_fingerprint(tiny_model("llama", seed=1))
    with pytest.raises(SvdadaptError, match="recalibrate on this model"):
        store.check_covers(other, store.modules)
    with pytest.raises(SvdadaptError, match="lacks 1 target layers .e.g. lm_head."):
        store.check_covers(mine, [*store.modules, "lm_head"])


def test_unknown_layer_is_a_clear_error(store):
    with pytest.raises(SvdadaptError, match="no entry for layer lm_head"):
        store.covariance("lm_head")
