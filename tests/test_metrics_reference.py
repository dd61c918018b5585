"""Reference statistics files: round trip, provenance, refusal of mismatched feature networks."""

import json
import re

import numpy as np
import pytest

from diffusion_es.errors import UsageError
from diffusion_es.metrics.frechet import FeatureStats, frechet_distance
from diffusion_es.metrics.reference import check_features, load_reference, save_reference


class FakeExtractor:
    def __init__(self, name="digits", weights_hash="a" * 64, dim=4, preprocess="p"):
        self.name, self.weights_hash, self.dim, self.preprocess = name, weights_hash, dim, preprocess


@pytest.fixture
def ref_file(tmp_path):
    f = np.random.default_rng(0).normal(size=(50, 4))
    stats = FeatureStats.from_features(f)
    path = tmp_path / "ref.npz"
    save_reference(path, stats, FakeExtractor(), "digits", "heldout", features=f[:20])
    return path, stats, f


def test_round_trip_and_provenance(ref_file):
    path, stats, f = ref_file
    ref = load_reference(path)
    assert frechet_distance(ref.stats, stats) == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(ref.stats.sum_outer, stats.sum_outer, atol=1e-9)
    p = ref.provenance
    assert (p["dataset"], p["split"], p["count"], p["format_version"]) == ("digits", "heldout", 50, 1)
    assert p["features"] == {"name": "digits", "weights_sha256": "a" * 64, "dim": 4, "preprocess": "p"}
    np.testing.assert_array_equal(ref.features, f[:20].astype(np.float32))  # stored as float32: the same cast
    with np.load(path, allow_pickle=False) as z:  # plain arrays, mu/sigma named as in ADM / pytorch-fid
        np.testing.assert_allclose(z["mu"], f.mean(0), atol=1e-12)
        np.testing.assert_allclose(z["sigma"], np.cov(f, rowvar=False), atol=1e-12)
    check_features(ref, FakeExtractor())


@pytest.mark.parametrize("other, msg", [
    (FakeExtractor(name="inception"), "'digits' feature network"),
    (FakeExtractor(weights_hash="b" * 64), "other 'digits' weights (sha256 aaaaaaaaaaaa..., these are "
                                           "bbbbbbbbbbbb...); pass the weights it was made with (--feature-weights"),
    (FakeExtractor(preprocess="q"), "preprocessing"),
])
def test_mismatched_feature_network_refused(ref_file, other, msg):
    with pytest.raises(UsageError, match=re.escape(msg)):
        check_features(load_reference(ref_file[0]), other)


def test_foreign_or_damaged_files_refused(tmp_path, ref_file):
    adm = tmp_path / "VIRTUAL_adm.npz"
    np.savez(adm, mu=np.zeros(4), sigma=np.eye(4))
    with pytest.raises(UsageError, match="no provenance"):
        load_reference(adm)
    with pytest.raises(UsageError, match="does not exist"):
        load_reference(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UsageError, match="not an .npz file"):
        load_reference(junk)
    with np.load(ref_file[0], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    prov = json.loads(str(arrays["provenance"]))
    for change, msg in (({"format_version": 99}, "version 99"), ({"count": 7}, "do not match")):
        bad = dict(arrays, provenance=np.array(json.dumps(dict(prov, **change))))
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(UsageError, match=msg):
            load_reference(tmp_path / "bad.npz")
