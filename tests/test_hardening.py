"""harden: the model passed in is never modified, the rounds are reported, and the criterion of
undesirable inputs separates real digits from noise; ACET returns a changed copy."""
import torch
from torch import nn

from captum_invert import harden
from captum_invert.hardening import acet, projected_adam_attack, undesirable


def _mlp(digits):
    from captum_invert.models import TrainConfig, train

    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.SELU(), nn.Linear(64, 10))
    return train(net, digits[0], TrainConfig(epochs=5, lr=1e-3, optimizer="adam"), progress=False)


def test_harden_leaves_the_model_unchanged_and_reports_rounds(digits):
    model = _mlp(digits)
    model.train()  # whatever mode the caller left it in stays
    model[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hardened, report = harden(model, digits[0], rounds=1, per_class=4, epochs=1, attack_per_class=2,
                              adam_steps=20, eval_data=digits[1])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model.training and not model[1].weight.requires_grad and model[3].weight.requires_grad
    assert hardened is not model and not hardened.training
    assert any(not torch.equal(p, q) for p, q in zip(hardened.parameters(), model.parameters()))
    assert [r["round"] for r in report.rounds] == [0, 1] and report.rounds[1]["kept"] > 0
    assert 0.8 < report.rounds[0]["clean_accuracy"] <= 1 and "| round |" in report.table()


def test_undesirable_separates_digits_from_noise(digits):
    x, y = digits[0].tensors
    real = undesirable(x[:200], y[:200], data=digits[0])
    assert float(real.float().mean()) <= 0.1
    noise = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert bool(undesirable(noise, torch.arange(20) % 10, data=digits[0]).all())
    judge = nn.Sequential(nn.Flatten(), nn.Linear(784, 11))
    with torch.no_grad():
        judge[1].weight.zero_()
        judge[1].bias.copy_(torch.arange(11.0))  # always says 10 (no digit)
    assert bool(undesirable(x[:5], y[:5], judge=judge).all())


def test_strong_attack_and_acet(digits):
    model = _mlp(digits)
    labels = torch.arange(10)
    x = projected_adam_attack(model, labels, (1, 28, 28), steps=50)
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    with torch.no_grad():
        p = model(x).softmax(1)[labels, labels]
    assert float(p.mean()) > 0.5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    peer = acet(model, digits[0], epochs=1, steps=2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(p, q) for p, q in zip(peer.parameters(), model.parameters()))
