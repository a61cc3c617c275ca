import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.loss import nt_xent


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss written pair by pair, in float64: l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / temperature) / denominator)
    return torch.tensor(total / (2 * n), dtype=torch.float64)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_matches_pairwise_reference(temperature):
    g = torch.Generator().manual_seed(int(temperature * 10))
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert nt_xent(z1, z2, temperature).double().item() == pytest.approx(
        reference_nt_xent(z1, z2, temperature).item(), rel=1e-5)


def test_gradient_matches_reference():
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    nt_xent(z1, z2, 0.5).backward()
    eps, grads = 1e-6, torch.zeros_like(z1)
    for idx in range(z1.numel()):  # central differences of the reference
        d = torch.zeros_like(z1).view(-1)
        d[idx] = eps
        d = d.view_as(z1)
        grads.view(-1)[idx] = (reference_nt_xent(z1.detach() + d, z2.detach(), 0.5)
                               - reference_nt_xent(z1.detach() - d, z2.detach(), 0.5)) / (2 * eps)
    torch.testing.assert_close(z1.grad, grads, rtol=1e-4, atol=1e-7)


def test_aligned_views_score_lower_than_random():
    z = torch.randn(32, 16)
    assert nt_xent(z, z + 0.01 * torch.randn_like(z)) < nt_xent(z, torch.randn(32, 16))


def test_invariant_to_scale_of_projections():
    z1, z2 = torch.randn(8, 4), torch.randn(8, 4)
    torch.testing.assert_close(nt_xent(z1, z2), nt_xent(3 * z1, 0.5 * z2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = len(z1) // world
    a1 = z1[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    a2 = z2[rank * b:(rank + 1) * b].clone().requires_grad_(True)
    loss = nt_xent(a1, a2, 0.5)
    loss.backward()
    # DDP averages gradients over processes; do the same to compare with one process on the global batch.
    g1, g2 = a1.grad / world, a2.grad / world
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    out[rank] = (mean_loss.item() / world, g1, g2)
    dist.destroy_process_group()


def test_two_processes_match_one_on_the_global_batch():
    world, g = 2, torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(world, _free_port(), z1, z2, out), nprocs=world)
        results = dict(out)
    one1, one2 = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss = nt_xent(one1, one2, 0.5)
    loss.backward()
    for rank in range(world):
        distributed_loss, g1, g2 = results[rank]
        assert distributed_loss == pytest.approx(loss.item(), rel=1e-5)
        torch.testing.assert_close(g1, one1.grad[rank * 4:(rank + 1) * 4])
        torch.testing.assert_close(g2, one2.grad[rank * 4:(rank + 1) * 4])
    # Each process's loss saw the other process's negatives: its half batch alone gives another value.
    assert nt_xent(z1[:4], z2[:4], 0.5).item() != pytest.approx(loss.item(), rel=1e-3)


def test_low_precision_projections_are_normalised_in_float32():
    z1, z2 = torch.randn(16, 8).bfloat16(), torch.randn(16, 8).bfloat16()
    loss = nt_xent(z1, z2, 0.5)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, nt_xent(z1.float(), z2.float(), 0.5))
