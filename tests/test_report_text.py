"""Sentences of the reports that depend on the numbers: they must say what the numbers say."""

from diffusion_es.experiments.blocks import power_text

BASE = dict(steps=20, sampler="ddpm", n_samples=500, baseline=[1.0] * 4, lam_probe=1.04, sets_needed=22, effect=0.03,
            n_val_sets=8, resolvable=0.023, capped=True)


def test_power_text_says_whether_pairing_helped():
    helped = power_text({**BASE, "sd_metric_rel": 0.355, "sd_paired": 0.0274})
    assert "35.5 %" in helped and "2.74 %" in helped and "pairing cancels most" in helped
    hurt = power_text({**BASE, "sd_metric_rel": 0.117, "sd_paired": 0.173})
    assert "pairing does not help here" in hurt and "only" not in hurt
    between = power_text({**BASE, "sd_metric_rel": 0.10, "sd_paired": 0.07})
    assert "pairing" not in between.split("(sd")[1].split(")")[0]
    assert "**8 validation sets**" in helped and "capped by the profile" in helped
