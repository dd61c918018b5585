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


def test_a_snapshot_store_serves_only_parts_present_when_opened_and_a_reader_writes_nothing(tmp_path):
    """The torchrun protocol of calibrate's scores: rank 0 writes; every rank serves what existed when it opened
    the store, so a part rank 0 writes meanwhile is not taken from disk by one rank while another computes it."""
    from diffusion_es.store import PartStore

    fp = {"model": "m"}
    PartStore(tmp_path, fp).get_or_run("score", {"k": 1}, lambda: {"value": 1.0})
    writer = PartStore(tmp_path, fp, snapshot=True)
    reader = PartStore(tmp_path, fp, writer=False, snapshot=True)
    assert writer.get_or_run("score", {"k": 1}, lambda: {"value": -1.0})[0]["value"] == 1.0  # from disk
    assert reader.get_or_run("score", {"k": 1}, lambda: {"value": -1.0})[1] is True
    writer.get_or_run("score", {"k": 2}, lambda: {"value": 2.0})  # written after both opened
    assert reader.get_or_run("score", {"k": 2}, lambda: {"value": 2.5})[1] is False  # computed, like the writer
    reader.get_or_run("score", {"k": 3}, lambda: {"value": 3.0})
    assert PartStore(tmp_path, fp).get_or_run("score", {"k": 2}, lambda: {})[0]["value"] == 2.0
    assert PartStore(tmp_path, fp).get_or_run("score", {"k": 3}, lambda: {"value": 9.0})[1] is False  # not written
