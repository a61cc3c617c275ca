import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.loss import nt_xent
from trainer.models import SimCLR
from trainer.optim import LARS, WarmupCosine, build_optimizer, build_scheduler, loss_scale, parameter_groups, replan


def test_parameter_groups_split_weights_from_bn_and_bias():
    model = SimCLR("resnet18")
    weights, others = parameter_groups(model, 1e-4, exclude_bn_bias=True)
    assert all(p.ndim > 1 for p in weights["params"]) and all(p.ndim == 1 for p in others["params"])
    assert len(weights["params"]) + len(others["params"]) == len(list(model.parameters()))
    others_ids = {id(p) for p in others["params"]}
    assert id(model.projector[1].weight) in others_ids and id(model.projector[3].bias) in others_ids
    assert (weights["weight_decay"], others["weight_decay"]) == (1e-4, 0.0)


@pytest.mark.parametrize("name, kind, other_decay", [("sgd", torch.optim.SGD, 5e-4), ("adam", torch.optim.Adam, 5e-4),
                                                      ("lars", LARS, 0.0)])
def test_build_optimizer(name, kind, other_decay):
    opt = build_optimizer(SimCLR("resnet18"), name, lr=0.1, weight_decay=5e-4)
    assert isinstance(opt, kind)
    assert [g["weight_decay"] for g in opt.param_groups] == [5e-4, other_decay]
    if name == "lars":
        assert [g["lars_exclude"] for g in opt.param_groups] == [False, True]


def test_lars_step_against_formula():
    w = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # norm 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.1}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.5, eta=0.01)
    w.grad, b.grad = torch.tensor([[0.0, 2.0]]), torch.tensor([2.0])
    opt.step()
    g = torch.tensor([[0.3, 2.4]])  # grad + 0.1 * w
    trust = 0.01 * 5 / g.norm()
    torch.testing.assert_close(w.data, torch.tensor([[3.0, 4.0]]) - 0.5 * trust * g)
    torch.testing.assert_close(b.data, torch.tensor([0.0]))  # excluded: plain SGD step, no adaptation


def test_warmup_then_cosine_values():
    f = WarmupCosine(total_steps=100, warmup_steps=10)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)
    assert f(99) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_steps_per_optimisation_step():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, total_steps=20, warmup_steps=4)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[:5] == pytest.approx([0.5, 1.0, 1.5, 2.0, 2.0])
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_a_replanned_schedule_ends_at_its_new_length_and_checkpoints_carry_the_plan():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, total_steps=10**9, warmup_steps=8)  # a budgeted run before its plan
    for _ in range(5):
        opt.step()
        sched.step()
    replan(sched, 12)  # the warm-up is cut to half the run
    for _ in range(7):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    saved = sched.state_dict()
    resumed = build_scheduler(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 10**9, 8)
    resumed.load_state_dict(saved)
    assert (resumed.lr_lambdas[0].total_steps, resumed.lr_lambdas[0].warmup_steps) == (12, 6)


def test_lars_on_the_doubled_loss_steps_as_simclrs_summed_loss():
    """SimCLR's reference sums the two views' cross-entropies; ours averages them. Under LARS the doubled mean
    must give the reference's update (weight decay is added to the gradient before the trust ratio)."""
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)

    def reference(w):
        a, b = F.normalize(z1 @ w, dim=1), F.normalize(z2 @ w, dim=1)
        logits_aa, logits_ab = a @ a.T / 0.5 - torch.eye(8) * 1e9, a @ b.T / 0.5
        logits_bb, logits_ba = b @ b.T / 0.5 - torch.eye(8) * 1e9, b @ a.T / 0.5
        labels = torch.arange(8)
        return (F.cross_entropy(torch.cat([logits_ab, logits_aa], 1), labels)
                + F.cross_entropy(torch.cat([logits_ba, logits_bb], 1), labels))

    results = []
    for objective in (lambda w: nt_xent(z1 @ w, z2 @ w, 0.5) * loss_scale("lars"), reference):
        w = nn.Parameter(torch.eye(4) + 0.1)
        opt = build_optimizer(nn.ParameterList([w]), "lars", lr=1.0, weight_decay=1e-2)
        objective(w).backward()
        opt.step()
        results.append(w.detach().clone())
    torch.testing.assert_close(results[0], results[1])
    assert loss_scale("sgd") == loss_scale("adam") == 1.0
