"""The Python API refuses what the CLI refuses and keeps λ in half precision (issue 14); λ schedule files record
the sampling setting they were made for, and a mismatch is refused unless told how to adapt (issue 14)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from diffusion_es.core.analytic import GaussianDenoiser
from diffusion_es.core.param import FnDenoiser
from diffusion_es.core.scaling import (Linear, PerStep, Uniform, adapt_schedule, load_schedule, read_schedule,
                                       save_schedule, schedule_mismatch)
from diffusion_es.samplers import check_seeds, sample

DEN = GaussianDenoiser((2,), std=0.5)


# ---- seeds -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds, msg", [
    ([1.5], "whole numbers"), ([np.float64(2.0)], "whole numbers"), (["3"], "whole numbers"), ([True], "whole"),
    ([1, 1], "distinct"), ([-1], "lie in"), ([2**63], "lie in"), ([], "no seeds"),
    ([5, 2**32 + 5], "seeds 5 and 4294967301 give the same sample"),
    (torch.tensor(3), r"a collection of whole numbers, e\.g\. range\(3\)"), (torch.tensor([1.5]), "whole numbers"),
])
def test_check_seeds_refuses_what_the_cli_refuses(seeds, msg):
    with pytest.raises(ValueError, match=msg):
        check_seeds(seeds)
    with pytest.raises(ValueError, match=msg):  # and so does sample(), before any work
        sample(DEN, "ddim", 2, (2,), seeds)


def test_check_seeds_accepts_whole_numbers_of_any_integer_type():
    assert check_seeds([np.int64(3), 0, 2**63 - 1, np.uint8(7)]) == [3, 0, 2**63 - 1, 7]
    assert check_seeds(range(3)) == [0, 1, 2]


# ---- es as a number, non-finite samples ------------------------------------------------------------------------------
def test_sample_takes_a_number_for_uniform_es():
    base = sample(DEN, "ddim", 4, (2,), range(8))
    a = sample(DEN, "ddim", 4, (2,), range(8), es=1.01)
    b = sample(DEN, "ddim", 4, (2,), range(8), es=Uniform(1.01))
    assert torch.equal(a, b) and not torch.equal(a, base)
    assert torch.equal(sample(DEN, "ddim", 4, (2,), range(8), es=1), base)  # λ = 1 is the baseline bit for bit
    for bad in (0.0, float("nan"), -1.0):
        with pytest.raises(ValueError, match="finite and > 0"):
            sample(DEN, "ddim", 4, (2,), range(8), es=bad)


@pytest.mark.parametrize("opts, msg", [({"S_noise": float("nan")}, "S_noise"), ({"S_tmax": float("nan")}, "S_tmax"),
                                       ({"S_churn": float("inf")}, "S_churn"), ({"S_tmin": 2.0, "S_tmax": 1.0}, "S_tmax")])
def test_sampler_options_are_checked_before_any_work(opts, msg):
    with pytest.raises(ValueError, match=msg):
        sample(DEN, "euler", 3, (2,), range(4), **opts)


@pytest.mark.parametrize("clip, msg", [(-1.0, "a finite number > 0"), (float("nan"), "a finite number > 0"),
                                       (float("inf"), "a finite number > 0"), ("1", "one real number, got str")])
def test_a_clip_bound_must_be_a_positive_number(clip, msg):
    for sampler in ("ddpm", "ddim"):
        with pytest.raises(ValueError, match=f"^clip must be {msg}"):
            sample(DEN, sampler, 3, (2,), range(4), clip=clip)


def test_clip_takes_booleans_of_any_kind_and_zero_for_none():
    import numpy as np
    import torch

    from diffusion_es.samplers import clip_bound

    for on in (True, np.True_, torch.tensor(True)):
        assert clip_bound(on, DEN) == 1.0
    for off in (False, np.False_, torch.tensor(False), 0, 0.0):
        assert clip_bound(off, DEN) is None
    assert clip_bound(None, DEN) == 1.0 and clip_bound(2, DEN) == 2.0
    kw = dict(shape=(2,), seeds=range(4))
    assert torch.equal(sample(DEN, "ddim", 3, clip=np.False_, **kw), sample(DEN, "ddim", 3, clip=False, **kw))


def test_sample_refuses_non_finite_results():
    broken = FnDenoiser(lambda x, sigma: x * float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        sample(broken, "euler", 3, (2,), range(4))


# ---- half precision: λ is never rounded to the network's dtype ------------------------------------------------------
class _HalfNet(nn.Module):
    """An EDM-style denoiser computing in a half dtype (as a bf16/fp16 network does)."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x, sigma):
        return (x.to(self.dtype) * 0.6 + 0.25).to(self.dtype)


@pytest.mark.parametrize("dtype, lam", [(torch.bfloat16, 1.003), (torch.float16, 1.0005)])
def test_kdiffusion_wrapper_keeps_lambda_in_half_precision(dtype, lam):
    from diffusion_es.adapters.kdiffusion import EpsilonScaledDenoiser

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(256, 3, 4, 4, generator=g) * 8).to(dtype)
    sigma = torch.full((256,), 2.0, dtype=dtype)
    net = _HalfNet(dtype)
    D = net(x, sigma)
    out = EpsilonScaledDenoiser(net, Uniform(lam))(x, sigma)
    assert out.dtype == dtype
    # λ and the division in float32, only the result rounded to the network's dtype
    expected = (x.float() - (x.float() - D.float()) / lam).to(dtype)
    assert torch.equal(out, expected)
    # what casting λ to the dtype would give: bf16(1.003) = 1.0 (ES silently off), fp16(1.0005) = 1.00098
    lam_rounded = float(torch.tensor(lam, dtype=dtype))
    assert lam_rounded != lam
    rounded = (x.float() - (x.float() - D.float()) / lam_rounded).to(dtype)
    assert not torch.equal(out, rounded)
    if dtype == torch.bfloat16:
        assert not torch.equal(out, D)  # ES is on (with λ rounded to bf16 it would be the model's own output)


# ---- schedule files: what they were made for ----------------------------------------------------------------------
def test_schedule_file_records_its_setting(tmp_path):
    p = tmp_path / "lam.json"
    save_schedule(p, Linear(0.01, 1.0), sampler="ddim", steps=20, spacing="adm", calibration={"gain": -0.1})
    raw = json.loads(p.read_text())
    assert raw["made_for"] == {"sampler": "ddim", "steps": 20, "spacing": "adm"} and raw["calibration"]["gain"] == -0.1
    sched, made_for = read_schedule(p)
    assert sched == Linear(0.01, 1.0) and made_for == raw["made_for"] and load_schedule(p) == sched
    save_schedule(p, Uniform(1.01))  # a bare schedule: made for nothing in particular
    assert read_schedule(p) == (Uniform(1.01), None)
    with pytest.raises(ValueError, match="steps >= 1"):
        save_schedule(p, Uniform(1.01), sampler="ddim")


def test_schedule_mismatch():
    made = {"sampler": "ddim", "steps": 20, "spacing": "adm"}
    assert schedule_mismatch(made, "ddim", 20, "adm") == ""
    assert schedule_mismatch(None, "ddpm", 100) == ""
    assert schedule_mismatch(made, "ddpm", 100, "adm") == "sampler ddim, not ddpm; 20 steps, not 100"
    assert schedule_mismatch(made, "ddim", 20, "linspace") == "spacing adm, not linspace"
    assert schedule_mismatch(made, "ddim", 20, None) == ""  # an EDM sampler has no spacing


def test_adapt_schedule():
    lin = Linear(0.01, 1.0)  # λ from 1.19 (first of 20 steps) to 1.0 (last)
    s = adapt_schedule(lin, 20, 100, "stretch")
    np.testing.assert_allclose(s.values(100)[[0, -1]], lin.values(20)[[0, -1]], rtol=1e-14)
    np.testing.assert_allclose(np.diff(s.values(100)), -0.01 * 19 / 99, rtol=1e-12)
    assert adapt_schedule(lin, 20, 100, "index") == lin  # λ_t = k t + b for t = 99 .. 0
    assert adapt_schedule(lin, 20, 1, "stretch") == Uniform(1.0)
    assert adapt_schedule(Uniform(1.02), 20, 5, "stretch") == Uniform(1.02)
    ps = PerStep([1.1, 1.05, 1.0])
    np.testing.assert_allclose(adapt_schedule(ps, 3, 5, "stretch").values(5), [1.1, 1.075, 1.05, 1.025, 1.0])
    with pytest.raises(ValueError, match="stretch it instead"):
        adapt_schedule(ps, 3, 5, "index")
    with pytest.raises(ValueError, match="adapt must be one of"):
        adapt_schedule(lin, 20, 10, "squeeze")



def test_library_refuses_a_loaded_schedule_made_for_another_setting(tmp_path):
    """load_schedule keeps what the file was made for; sample() and measure_exposure refuse it for another setting
    (as the CLI does) until adapt_schedule says how to use it, and give the same samples as the schedule in code."""
    from diffusion_es.diagnostics.measure import measure_exposure

    lam = tmp_path / "lam.json"
    save_schedule(lam, Linear(0.01, 1.0), sampler="ddim", steps=4, spacing="adm")
    es = load_schedule(lam)
    assert es.made_for == {"sampler": "ddim", "steps": 4, "spacing": "adm"} and es == Linear(0.01, 1.0)
    assert torch.equal(sample(DEN, "ddim", 4, (2,), range(3), es=es),
                       sample(DEN, "ddim", 4, (2,), range(3), es=Linear(0.01, 1.0)))
    for sampler, steps, spacing, diff in (("ddim", 8, "adm", "4 steps, not 8"), ("ddpm", 4, "adm", "sampler ddim"),
                                          ("ddim", 4, "linspace", "spacing adm, not linspace")):
        with pytest.raises(ValueError, match=rf"made for ddim with 4 steps \({diff}.*adapt_schedule\(es, 4, {steps}"):
            sample(DEN, sampler, steps, (2,), range(3), es=es, spacing=spacing)
    with pytest.raises(ValueError, match="made for ddim with 4 steps"):
        measure_exposure(DEN, torch.zeros(4, 2), "heun", 4, es=es, n_samples=4)
    assert sample(DEN, "euler", 4, (2,), range(3), es=adapt_schedule(es, 4, 4, "stretch")).shape == (3, 2)
    stretched = adapt_schedule(es, 4, 8, "stretch")
    assert stretched.made_for is None and es.made_for is not None  # the loaded one is left as it was
    assert torch.equal(sample(DEN, "ddim", 8, (2,), range(3), es=stretched),
                       sample(DEN, "ddim", 8, (2,), range(3), es=Linear(0.01 * 3 / 7, 1.0)))
    save_schedule(lam, Uniform(1.01))  # a file made for no setting: any run
    assert sample(DEN, "heun", 3, (2,), range(3), es=load_schedule(lam)).shape == (3, 2)

def test_cli_refuses_a_schedule_made_for_another_setting_unless_told(tmp_path, capsys):
    from diffusion_es.cli import main

    lam = tmp_path / "lam.json"
    save_schedule(lam, Linear(0.01, 1.0), sampler="ddim", steps=4, spacing="adm")
    run = ["sample", "--model", "default", "--sampler", "ddim", "--seeds", "0-3", "--no-progress"]
    assert main([*run, "--steps", "8", "--es-schedule", str(lam), "--out", str(tmp_path / "a.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "made for ddim with 4 steps (4 steps, not 8)" in err[0] and "--es-adapt" in err[0]
    assert not any(tmp_path.glob("a.npz*"))
    assert main([*run, "--steps", "8", "--es-schedule", str(lam), "--es-adapt", "stretch",
                 "--out", str(tmp_path / "a.npz")]) == 0
    k = 0.01 * 3 / 7  # the stretched slope: same λ at the first and the last step
    assert main([*run, "--steps", "8", "--es-linear", f"{k!r},1.0", "--out", str(tmp_path / "b.npz")]) == 0
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    assert main([*run, "--steps", "4", "--es-schedule", str(lam), "--out", str(tmp_path / "c.npz")]) == 0


def test_calibrate_writes_what_the_schedule_was_made_for(tmp_path, monkeypatch, capsys):
    import importlib

    from diffusion_es.cli import main

    cal = importlib.import_module("diffusion_es.diagnostics.calibrate")  # (the package re-exports the function)

    def fake(den, sampler, steps, shape, metric, **kw):  # a significant result without the search
        return cal.CalibrationResult(kind="uniform", sampler=sampler, steps=steps, metric="m",
                                     schedule=Uniform(1.01).to_dict(), candidate=Uniform(1.01).to_dict(),
                                     significant=True, gain=-0.1, gain_ci=(-0.2, -0.05), gain_per_set=[-0.1],
                                     baseline_val=[1.0], best_val=[0.9], lam_spread=0.0, message="ok")

    monkeypatch.setattr(cal, "calibrate", fake)
    lam = tmp_path / "lam.json"
    assert main(["calibrate", "--model", "default", "--sampler", "heun", "--steps", "7", "--out", str(lam),
                 "--no-progress"]) == 0
    from diffusion_es.experiments.common import weights_id
    from diffusion_es.models import load_model

    w = weights_id(load_model("default"))  # and the model it was calibrated on
    assert json.loads(lam.read_text())["made_for"] == {"sampler": "heun", "steps": 7, "weights": w}  # EDM: no spacing
    assert main(["calibrate", "--model", "default", "--sampler", "ddpm", "--steps", "7", "--spacing", "linspace",
                 "--out", str(lam), "--no-progress"]) == 0
    assert json.loads(lam.read_text())["made_for"] == {"sampler": "ddpm", "steps": 7, "spacing": "linspace",
                                                       "weights": w}


@pytest.mark.parametrize("device, msg", [("gpu", "not a torch device"), ("cpu:1", "one cpu device"),
                                         ("cuda:99", "CUDA|99")])
def test_a_device_this_machine_lacks_is_one_clear_error(device, msg):
    """The library checks its device argument as the CLI does (one line, not torch's assertion from deep inside)."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 99:
        pytest.skip("this machine has 100 GPUs")
    from diffusion_es.diagnostics.calibrate import calibrate
    from diffusion_es.diagnostics.measure import measure_exposure

    with pytest.raises(ValueError, match=msg):
        sample(DEN, "ddim", 3, (2,), range(4), device=device)
    with pytest.raises(ValueError, match=msg):
        measure_exposure(DEN, torch.zeros(8, 2, dtype=torch.float64), "ddim", 3, n_samples=4, device=device)
    with pytest.raises(ValueError, match=msg):
        calibrate(DEN, "ddim", 3, (2,), lambda x: 1.0, n_samples=4, device=device)


def test_calibrate_range_must_be_two_numbers():
    from diffusion_es.diagnostics.calibrate import calibrate

    with pytest.raises(ValueError, match="lam_range must be two numbers"):
        calibrate(DEN, "ddim", 3, (2,), lambda x: 1.0, lam_range=1.01)


def test_seeds_must_be_a_collection():
    with pytest.raises(ValueError, match=r"e.g. range\(5\)"):
        sample(DEN, "ddim", 3, (2,), 5)


def test_frechet_distance_of_raw_features_says_what_to_pass():
    import numpy as np

    from diffusion_es.metrics.frechet import frechet_distance

    f = np.random.default_rng(0).standard_normal((50, 4))
    with pytest.raises(ValueError, match="FeatureStats.from_features"):
        frechet_distance(f, f)


def test_save_schedule_takes_a_number_and_vpdenoiser_a_schedule(tmp_path):
    from diffusion_es.core.param import VPDenoiser
    from diffusion_es.core.scaling import load_schedule, save_schedule

    save_schedule(tmp_path / "s.json", 1.01)
    assert load_schedule(tmp_path / "s.json").to_dict() == {"kind": "uniform", "b": 1.01}
    with pytest.raises(TypeError, match="VPSchedule"):
        VPDenoiser(lambda x, t: x, None)


def test_the_vp_samplers_say_they_need_a_respaced_chain():
    import torch

    from diffusion_es.core.schedules import VPSchedule, respace
    from diffusion_es.samplers import SeedNoise, sample_ddim

    ts = respace(1000, 10)
    noise = SeedNoise([0, 1], (2,))
    with pytest.raises(TypeError, match="schedule.respaced\\(timesteps\\)"):
        sample_ddim(DEN, noise.initial(), ts)
    x = sample_ddim(DEN, noise.initial(), VPSchedule.linear().respaced(ts))  # the form it names works
    assert torch.isfinite(x).all()


def test_seeds_equal_modulo_2_to_the_32_are_the_same_sample_so_they_are_refused_together():
    """Why: torch's CPU generator keeps a seed's low 32 bits (checked here on torch itself), so two such seeds in
    one run were a duplicated sample in an FD set. Apart they stay allowed (the library's derived seed sets)."""
    import torch

    a = sample(DEN, "ddpm", 3, (2,), [7])
    b = sample(DEN, "ddpm", 3, (2,), [7 + 2**32])
    assert torch.equal(torch.randn(4, generator=torch.Generator().manual_seed(7)),
                       torch.randn(4, generator=torch.Generator().manual_seed(7 + 2**32)))
    assert torch.equal(a, b)
    assert check_seeds([2**32 + 1, 2**33 + 2, 3]) == [2**32 + 1, 2**33 + 2, 3]
    from diffusion_es.samplers import SeedNoise

    with pytest.raises(ValueError, match="seeds 5 and 4294967301 give the same sample"):
        SeedNoise([5, 2**32 + 5], (3,))  # the noise source of the hand-written loops (sample_ddpm(den, noise.initial()))


@pytest.mark.parametrize("argv", [["sample", "--seeds", "4294967290-4294967300"], ["train", "--seed", "4294967296"]])
def test_the_command_line_takes_seeds_below_2_to_the_32(argv, tmp_path, capsys):
    from diffusion_es.cli import main

    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "4294967295 (2^32 - 1: torch's CPU generator keeps only the low 32 bits" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_ddim_eta_above_one_is_refused():
    """η > 1 asks for more step noise than the posterior has (ADM's and diffusers' DDIM give NaN where the direction
    term's root goes negative); the samplers clipped it to 0 and ran a sampler of no family."""
    from diffusion_es.core.schedules import VPSchedule
    from diffusion_es.samplers import sample

    sch = VPSchedule.linear()
    assert sample(DEN, "ddim", 3, (2,), [0, 1], eta=1.0, schedule=sch).shape == (2, 2)
    for eta in (1.5, float("inf")):
        with pytest.raises(ValueError, match=r"eta must lie in \[0, 1\]"):
            sample(DEN, "ddim", 3, (2,), [0, 1], eta=eta, schedule=sch)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_network_gets_exact_timesteps(dtype):
    """VPDenoiser cast t to the network's dtype: bf16 holds 999 as 1000 and 749 as 748, so a bf16 UNet got the
    wrong time conditioning (t = 1000 is outside a 1000-step table; an nn.Embedding(1000, ...) crashed). t now stays
    float32 for half-precision networks, as diffusers' pipelines hand it over; the sample itself keeps the net's
    dtype. The same for flow and EDM denoisers."""
    from diffusion_es.core.param import FlowDenoiser, VPDenoiser
    from diffusion_es.core.pfgm import EDMDenoiser, EDMSchedule
    from diffusion_es.core.schedules import VPSchedule
    from diffusion_es.samplers import sample

    seen = []

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros((), dtype=dtype))

        def forward(self, x, t):
            seen.append((x.dtype, t.dtype, t.double()))
            return x * self.w

    sch = VPSchedule.linear()
    sample(VPDenoiser(Net(), sch), "ddim", 5, (2,), [0, 1], schedule=sch)
    assert all(xd == dtype and td == torch.float32 for xd, td, _ in seen)
    assert [float(t[0]) for *_, t in seen] == [999.0, 749.0, 500.0, 250.0, 0.0]  # ADM's respacing, exactly
    seen.clear()
    FlowDenoiser(Net(), time_scale=1000.0)(torch.zeros(2, 2, dtype=torch.float64), 0.5)
    assert seen[0][1] == torch.float32
    seen.clear()
    EDMDenoiser(Net(), EDMSchedule())(torch.zeros(2, 2, dtype=torch.float64), 0.5)
    assert seen[0][1] == torch.float32


def test_sample_shape_is_checked_before_any_work():
    """A shape that is not one sample's (0 or negative sizes, fractions, not numbers) failed deep inside torch;
    an int n is the shape (n,)."""
    from diffusion_es.core.schedules import VPSchedule
    from diffusion_es.samplers import check_shape, sample

    sch = VPSchedule.linear()
    assert sample(DEN, "ddim", 2, 2, [0, 1], schedule=sch).shape == (2, 2)
    assert check_shape(np.int64(4)) == (4,) and check_shape(torch.Size([1, 2])) == (1, 2)
    for bad in ((3, 0, 4), (3, -4, 4), (2.5,), "ab", (), None):
        with pytest.raises(ValueError, match="shape must be the shape of one sample"):
            sample(DEN, "ddim", 2, bad, [0, 1], schedule=sch)


def test_sampler_inputs_of_the_wrong_type_are_one_clear_error():
    """From a library-API audit: eta='0.5' passed the check (float('0.5')) and failed inside the step with a
    TypeError; schedule=3 gave an AttributeError; es= refused a 0-d tensor or array although Uniform takes one."""
    from diffusion_es.core.schedules import VPSchedule
    from diffusion_es.samplers import sample

    sch = VPSchedule.linear()
    with pytest.raises(ValueError, match="eta must be one real number, got str"):
        sample(DEN, "ddim", 2, (2,), [0, 1], schedule=sch, eta="0.5")
    with pytest.raises(ValueError, match="S_churn must be one real number"):
        sample(DEN, "euler", 2, (2,), [0, 1], schedule=sch, S_churn="1")
    for bad in (3, np.linspace(1e-4, 0.02, 1000)):
        with pytest.raises(TypeError, match="schedule must be a noise schedule"):
            sample(DEN, "ddim", 2, (2,), [0, 1], schedule=bad)
    base = sample(DEN, "ddim", 2, (2,), [0, 1], schedule=sch, es=1.01)
    for lam in (torch.tensor(1.01, dtype=torch.float64), np.array(1.01)):
        assert torch.equal(sample(DEN, "ddim", 2, (2,), [0, 1], schedule=sch, es=lam), base)
    with pytest.raises(TypeError, match="es must be a LambdaSchedule or a number"):
        sample(DEN, "ddim", 2, (2,), [0, 1], schedule=sch, es=torch.tensor([1.01, 1.02]))


# ---- a network passed where a denoiser is expected -------------------------------------------------------------------
class _EpsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x_t, t):
        return self.lin(x_t.float())


@pytest.mark.parametrize("net, arg", [(_EpsNet(), "t"), (lambda sample, timestep: sample, "timestep"),
                                      (lambda x, timesteps, cond=None: x, "timesteps")])
def test_a_network_is_refused_where_a_denoiser_is_expected(net, arg):
    """Read as D(x, σ), a network's ε would be taken for x̂_0 and sampling would run to wrong samples, silently."""
    with pytest.raises(TypeError, match=rf"net\(x_t, {arg}\): a network, not a denoiser.*VPDenoiser"):
        sample(net, "ddim", 2, (2,), range(2))


def test_denoiser_functions_and_explicit_wrappers_still_run():
    from diffusion_es.core.param import VPDenoiser
    from diffusion_es.core.schedules import VPSchedule
    net = _EpsNet()
    wrapped = sample(VPDenoiser(net, VPSchedule.linear()), "ddim", 2, (2,), range(2))
    assert wrapped.shape == (2, 2) and torch.isfinite(wrapped).all()
    assert sample(lambda x, sigma: 0 * x, "ddim", 2, (2,), range(2)).abs().max() == 0
    assert sample(FnDenoiser(lambda x, t: 0 * x), "ddim", 2, (2,), range(2)).abs().max() == 0  # "t" is σ here
    with pytest.raises(TypeError, match="expected a denoiser"):
        sample(3, "ddim", 2, (2,), range(2))
    from diffusion_es.models import load_model

    with pytest.raises(TypeError, match=r"got LoadedModel \(a loaded model: pass model.denoiser\(\)\)"):
        sample(load_model("default"), "ddim", 2, (64,), range(2))



def test_steps_and_per_step_values_of_the_wrong_type_are_one_line():
    for steps in (None, "20", float("inf"), float("nan"), 2.5):
        with pytest.raises(ValueError, match="steps must be a whole number >= 1"):
            sample(DEN, "ddim", steps, (2,), range(2))
    assert torch.equal(sample(DEN, "ddim", 2.0, (2,), range(2)), sample(DEN, "ddim", 2, (2,), range(2)))
    with pytest.raises(ValueError, match="not booleans or strings"):  # as Uniform("1.01") is refused
        PerStep(["1.0", "1.01"])
    assert torch.equal(sample(DEN, "ddim", 2, (2,), torch.tensor([0, 1])), sample(DEN, "ddim", 2, (2,), range(2)))
