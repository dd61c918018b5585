"""The per-seed noise protocol, byte for byte: :class:`SeedNoise` against the protocol written out literally.

``_ProtocolNoise`` below is the definition (one ``torch.Generator`` per seed; first draw ``torch.randn(shape)``,
then ``torch.randn((NOISE_BLOCK, *shape))`` per block, float32, returned as float64). However SeedNoise makes its
draws (in place, pinned, asynchronously, ...), every byte must equal this, for every shape (sizes below and above
the 16-element threshold where torch's CPU normal kernel changes path, and not multiples of 16), every access
pattern (skipped steps and blocks), and through the samplers.
"""

import pytest
import torch

from diffusion_es.samplers import NOISE_BLOCK, SeedNoise, common, sample
from diffusion_es.core.param import VPDenoiser
from diffusion_es.core.schedules import VPSchedule


class _ProtocolNoise:
    """The noise protocol, literally (the pre-optimisation implementation): the reference for every byte."""

    def __init__(self, seeds, shape, device="cpu", pfgm_D=None):
        assert pfgm_D is None or pfgm_D == float("inf")  # the Gaussian protocol (a PFGM++ prior is tested in test_pfgm.py)
        self.shape = tuple(shape)
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.z = torch.stack([torch.randn(self.shape, generator=g) for g in self.gens])
        self.start, self.block = None, None

    def initial(self):
        return self.z.to(torch.float64)

    def __call__(self, i):
        start = (i // NOISE_BLOCK) * NOISE_BLOCK
        while self.start is None or self.start < start:
            self.block = torch.stack([torch.randn((NOISE_BLOCK, *self.shape), generator=g) for g in self.gens])
            self.start = 0 if self.start is None else self.start + NOISE_BLOCK
        return self.block[:, i - start].to(torch.float64)


SHAPES = [(), (1,), (2,), (3,), (4,), (2, 3), (17,), (64,), (1, 8, 8), (3, 5, 7), (3, 16, 16)]
SEEDS = [0, 1, 7, 123456789, 2**63 - 1]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.numpy().tobytes() == b.numpy().tobytes()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("workers", [0, 2])
def test_initial_and_step_noise_are_the_protocols_bytes(shape, workers):
    ours, ref = SeedNoise(SEEDS, shape, workers=workers), _ProtocolNoise(SEEDS, shape)
    assert ours.initial().dtype == torch.float64
    assert _same(ours.initial(), ref.initial())
    for i in range(3 * NOISE_BLOCK + 2):
        assert _same(ours(i), ref(i)), (shape, i)


@pytest.mark.parametrize("steps", [[0, 1, 7, 8, 20], [5], [9, 10, 40], [0, 0, 3, 3, 31, 32]], ids=str)
@pytest.mark.parametrize("workers", [0, 1, 3, 16])
def test_skipped_and_repeated_steps_keep_the_stream_aligned(steps, workers):
    """With threads drawing ahead (more threads than seeds too), skipping whole blocks still draws them in order."""
    ours, ref = SeedNoise(SEEDS, (2, 3), workers=workers), _ProtocolNoise(SEEDS, (2, 3))
    for i in steps:
        assert _same(ours(i), ref(i)), i


def test_step_noise_is_a_fresh_tensor():
    """A caller may keep or modify what it got: asking for the same step again gives the original bytes."""
    n = SeedNoise([3, 4], (5,))
    a = n(2)
    kept = a.clone()
    a.mul_(0).add_(1)
    assert _same(n(2), kept)
    z = n.initial()
    z.zero_()
    assert _same(n.initial(), _ProtocolNoise([3, 4], (5,)).initial())


@pytest.mark.parametrize("workers", [0, 2])
def test_kept_steps_survive_later_blocks(workers):
    """On the CPU later blocks are drawn into the same buffer: what a caller kept from an earlier block (and the
    initial noise) must not change when they are drawn."""
    n, ref = SeedNoise(SEEDS, (4, 4), workers=workers), _ProtocolNoise(SEEDS, (4, 4))
    z, kept = n.initial(), {i: n(i) for i in (0, NOISE_BLOCK - 1)}
    for i in (NOISE_BLOCK, 2 * NOISE_BLOCK + 3, 5 * NOISE_BLOCK):
        assert _same(n(i), ref(i)), i
    fresh = _ProtocolNoise(SEEDS, (4, 4))
    ref_z, ref_kept = fresh.initial(), {i: fresh(i) for i in kept}
    assert _same(z, ref_z) and all(_same(kept[i], ref_kept[i]) for i in kept)


def test_workers_default_and_close():
    assert common.default_noise_workers("cpu") == 0 and common.default_noise_workers("meta") >= 1
    with pytest.raises(ValueError):
        SeedNoise([1], (2,), workers=-1)
    n, ref = SeedNoise(SEEDS, (3,), workers=2), _ProtocolNoise(SEEDS, (3,))
    assert _same(n(9), ref(9))           # block 8..15 in use, block 16..23 being drawn ahead
    n.close()                            # drops the block drawn ahead
    assert _same(n(12), ref(12))         # the current block stays available
    with pytest.raises(RuntimeError, match="closed"):
        n(16)


SCH = VPSchedule.linear()


class _Eps(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-0.5, 0.5, 12).reshape(3, 4))

    def forward(self, x_t, t):
        return torch.tanh(x_t @ self.w.T @ self.w) * (t.reshape(-1, 1) / 1000.0) + 0.3 * x_t


@pytest.mark.parametrize("sampler,kw", [("ddpm", dict(variance="small")), ("ddpm", dict(variance="large")),
                                        ("ddim", dict(eta=1.0)), ("euler", dict(S_churn=5.0)),
                                        ("heun", dict(S_churn=5.0, S_noise=1.003))])
def test_samples_are_unchanged_through_the_samplers(sampler, kw, monkeypatch):
    den = VPDenoiser(_Eps(), SCH)
    args = (den, sampler, 19, (4,), [5, 9, 2**40, 77])
    ours = sample(*args, schedule=SCH, batch_size=3, **kw)
    monkeypatch.setattr(common, "default_noise_workers", lambda device: 2)  # the accelerator path, on the CPU
    threaded = sample(*args, schedule=SCH, batch_size=3, **kw)
    monkeypatch.setattr(common, "SeedNoise", _ProtocolNoise)
    monkeypatch.setattr(_ProtocolNoise, "close", lambda self: None, raising=False)
    ref = sample(*args, schedule=SCH, batch_size=3, **kw)
    assert _same(ours, ref) and _same(threaded, ref)


@pytest.mark.parametrize("sampler,kw", [("ddpm", {}), ("ddim", dict(eta=1.0))])
def test_the_last_vp_step_draws_no_noise(sampler, kw):
    """The last DDPM/DDIM step adds no noise, so it asks for none: at 9 steps only the first block of 8 is drawn
    (the samples are those of the protocol, checked above through every sampler)."""
    from diffusion_es.samplers import SamplingPlan
    asked = []

    class Recording(SeedNoise):
        def __call__(self, i):
            asked.append(i)
            return super().__call__(i)

    noise = Recording([3, 1, 4], (4,))
    plan = SamplingPlan(sampler, NOISE_BLOCK + 1, SCH)
    with torch.no_grad():
        plan.run(VPDenoiser(_Eps(), SCH), noise.initial(), noise, **kw)
    assert asked == list(range(NOISE_BLOCK)) and noise._block_start == 0
