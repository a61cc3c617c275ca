import pytest
import torch
import torch.nn.functional as F

from trainer.knn import knn_predict, topk_accuracy


def brute_force(queries, bank, labels, classes, k, temperature):
    scores = torch.zeros(len(queries), classes, dtype=torch.float64)
    for q in range(len(queries)):
        sims = [(float(queries[q] @ bank[i]), i) for i in range(len(bank))]
        for sim, i in sorted(sims, reverse=True)[:k]:
            scores[q, labels[i]] += torch.exp(torch.tensor(sim / temperature, dtype=torch.float64))
    return scores


def test_knn_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(60, 8, generator=g), dim=1)
    queries = F.normalize(torch.randn(25, 8, generator=g), dim=1)
    labels = torch.randint(0, 4, (60,), generator=g)
    ours = knn_predict(queries, bank, labels, 4, k=7, temperature=0.1, chunk=10)
    torch.testing.assert_close(ours.double(), brute_force(queries, bank, labels, 4, 7, 0.1), rtol=1e-4, atol=1e-6)


def test_topk_accuracy():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    acc = topk_accuracy(scores, labels, (1, 2, 3))
    assert acc == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})
