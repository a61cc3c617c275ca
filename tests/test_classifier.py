import torch

from contract.networks import classifier_head
from trainer.classifier import fold_standardization


def test_folded_head_on_raw_features_equals_head_on_standardised_features():
    torch.manual_seed(0)
    x = torch.randn(64, 12) * torch.rand(12) * 5 + torch.randn(12) * 3
    mean, std = x.mean(0), x.std(0)
    for hidden in ((), (32,)):
        head = classifier_head(12, 5, hidden).eval()
        folded = fold_standardization(head, mean, std)
        torch.testing.assert_close(folded(x), head((x - mean) / std), atol=1e-5, rtol=1e-5)
        assert not torch.equal(folded[0].weight, head[0].weight)  # a copy changed, the original kept


def test_head_shapes():
    assert [type(m).__name__ for m in classifier_head(512, 10)] == ["Linear"]
    mlp = classifier_head(512, 10, [20480], dropout=0.8)
    assert [type(m).__name__ for m in mlp] == ["Linear", "ReLU", "Dropout", "Linear"]
    assert mlp[0].weight.shape == (20480, 512) and mlp[2].p == 0.8 and mlp[3].weight.shape == (10, 20480)
