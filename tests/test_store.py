"""The part store of long jobs: a damaged part (not JSON, not an object, edited, truncated) is computed again
with a note naming its file, never a traceback or a wrong result (issue 14)."""

import json

import numpy as np
import pytest

from diffusion_es.store import PartStore


@pytest.mark.parametrize("damage", [b"[]", b"\x00\xff\xfe binary", b"{}", b'{"value": 2.0, "compute_s": 0.1',
                                    "edited", "no-hash"])
def test_damaged_part_is_computed_again(tmp_path, damage):
    notes = []
    store = PartStore(tmp_path, {"model": "x"}, log=notes.append)
    calls = []

    def fn():
        calls.append(1)
        return {"value": np.float64(1.5), "list": (1, 2)}

    first, cached = store.get_or_run("cell", {"a": 1}, fn)
    assert not cached and first["value"] == 1.5 and first["list"] == [1, 2]  # exactly what a rerun reads back
    again, cached = store.get_or_run("cell", {"a": 1}, fn)
    assert cached and again == first and len(calls) == 1 and notes == []
    p = store.path("cell", {"a": 1})
    if damage == "edited":
        d = json.loads(p.read_text())
        d["value"] = 99.0  # still valid JSON, but not what was computed
        p.write_text(json.dumps(d))
    elif damage == "no-hash":  # a part written before parts carried their hash
        d = json.loads(p.read_text())
        d.pop("_content_sha256")
        p.write_text(json.dumps(d))
    else:
        p.write_bytes(damage)
    res, cached = store.get_or_run("cell", {"a": 1}, fn)
    assert not cached and res["value"] == 1.5 and len(calls) == 2
    assert len(notes) == 1 and str(p) in notes[0] and "computing that part again" in notes[0]
    assert store.get_or_run("cell", {"a": 1}, fn)[1]  # the rewritten part is served again
