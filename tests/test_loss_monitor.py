"""The loss-term monitor: gradient norms and shares computed right, its time budget, its record,
plot and checkpoint state (the trainers' use of it is tested with each method)."""

from __future__ import annotations

import math

import pytest
import torch

from nnunet_missingmod.training.loss_monitor import CLIPPED_PREFIX, GRADIENT_NORM_PREFIX, LossTermMonitor


def _terms_and_step():
    """Two terms on a small linear model, the step's gradient in .grad as after backward()."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x = torch.randn(8, 5)
    out = model(x)
    terms = {"fit": out.square().mean(), "pull": -0.5 * out[:, 0].mean(), "off": torch.zeros(())}
    sum(terms.values()).backward(retain_graph=True)
    return model, terms


def test_norms_and_shares_by_hand():
    model, terms = _terms_and_step()
    monitor = LossTermMonitor()
    assert monitor.start_epoch()  # the first epoch is always sampled
    sampled = monitor.sample(terms, model.parameters())
    params = list(model.parameters())
    total = torch.cat([p.grad.flatten() for p in params])
    for name in ("fit", "pull"):
        g = torch.cat([x.flatten() for x in torch.autograd.grad(terms[name], params, retain_graph=True)])
        assert sampled["gradient_norms"][name] == pytest.approx(float(g.norm()), rel=1e-5)
        assert sampled["gradient_shares"][name] == pytest.approx(float(g @ total / total.square().sum()), rel=1e-5)
    assert sampled["gradient_norms"]["off"] == sampled["gradient_shares"]["off"] == 0
    assert sum(sampled["gradient_shares"].values()) == pytest.approx(1.0, abs=1e-6)
    assert sampled["total_norm"] == pytest.approx(float(total.norm()), rel=1e-5)
    assert not monitor.sample_due


def test_a_gradient_scale_is_taken_out():
    model, terms = _terms_and_step()
    plain = LossTermMonitor().sample(terms, model.parameters())
    scaled = LossTermMonitor().sample(terms, model.parameters(), scale=1024.0)
    assert scaled["gradient_norms"] == pytest.approx(plain["gradient_norms"], rel=1e-5)


def test_sampling_stays_within_its_time_budget():
    monitor = LossTermMonitor(budget=0.02)
    assert monitor.start_epoch()
    monitor._sampling_s = 1.0  # one sample took 1 s
    monitor.add_training_time(10.0)
    assert not monitor.start_epoch()  # 1 s > 2 % of 10 s
    monitor.add_training_time(40.0)
    assert monitor.start_epoch()  # 1 s <= 2 % of 50 s


def test_epoch_record_log_plot_and_state(tmp_path):
    model, terms = _terms_and_step()
    monitor = LossTermMonitor()
    monitor.start_epoch()
    monitor.sample(terms, model.parameters())
    means = {"fit": 0.5, "pull": -0.1, GRADIENT_NORM_PREFIX + "network": 13.0, CLIPPED_PREFIX + "network": 0.25}
    record = monitor.end_epoch(0, means, clip=12)
    assert record["values"] == {"fit": 0.5, "pull": -0.1}
    assert record["clipped_fraction"] == {"network": 0.25} and record["mean_gradient_norm"] == {"network": 13.0}
    lines = LossTermMonitor.log_lines(record)
    assert len(lines) == 3 and "engaged in 25% of steps" in lines[2] and "share" in lines[1]
    monitor.start_epoch()
    monitor.end_epoch(1, means, clip=12)  # an epoch without a sample plots as a gap
    monitor.plot(str(tmp_path / "loss_terms.png"))
    assert (tmp_path / "loss_terms.png").stat().st_size > 10_000
    restored = LossTermMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert restored.history == monitor.history and "gradient_shares" not in restored.history[1]
    assert math.isclose(restored.state_dict()["training_s"], monitor.state_dict()["training_s"])
