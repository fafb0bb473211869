import copy

import pytest
import torch
import torch.nn.functional as F

from arseq.models import Transformer, TransformerConfig
from arseq.train.optim import Muon, OptimConfig, lr_factor, make_optimizer, orthogonalise


def tiny_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(TransformerConfig(vocab_size=12, max_seq_len=16, n_layer=2, n_head=2, d_model=32))


def train_steps(model, opt, steps: int) -> list[float]:
    data = torch.tensor([list(range(1, 12)) * 2])[:, :17].repeat(8, 1)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("shape", [(96, 32), (32, 96), (80, 48)])
def test_orthogonalise_brings_singular_values_near_one(shape):
    torch.manual_seed(0)
    g = torch.randn(shape) * torch.logspace(-1, 1, shape[1])
    before = torch.linalg.svdvals(g)
    after = torch.linalg.svdvals(orthogonalise(g))
    assert orthogonalise(g).shape == g.shape and before.max() / before.min() > 10
    assert 0.6 < after.min() and after.max() < 1.25, after


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_loss_falls_on_a_tiny_corpus(name):
    model = tiny_model()
    losses = train_steps(model, make_optimizer(model, OptimConfig(name=name, lr=1e-2, warmup_steps=0)), 40)
    assert losses[-1] < 0.2 * losses[0]


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    model = tiny_model()
    opt = make_optimizer(model, OptimConfig(name="muon"))
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    in_adamw = {names[id(p)] for g in opt.adamw.param_groups for p in g["params"]}
    assert in_muon and all(n.startswith("blocks.") and n.endswith("weight") and "norm" not in n for n in in_muon)
    assert "embed.weight" in in_adamw and not in_muon & in_adamw and in_muon | in_adamw == set(names.values())
    assert isinstance(opt.muon, Muon) and opt.muon.param_groups[0]["weight_decay"] == 0.1


def test_one_schedule_drives_both_optimizers():
    model = tiny_model()
    cfg = OptimConfig(name="muon", lr=1e-2, min_lr=1e-3, warmup_steps=2)
    opt = make_optimizer(model, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, 10))
    for _ in range(5):
        train_steps(model, opt, 1)
        sched.step()
    expected = cfg.lr * lr_factor(5, cfg, 10)
    assert all(g["lr"] == pytest.approx(expected) for o in (opt.muon, opt.adamw) for g in o.param_groups)


def test_muon_state_round_trips():
    """A run resumed from a checkpoint's optimizer state continues exactly as the uninterrupted one."""
    model = tiny_model()
    opt = make_optimizer(model, OptimConfig(name="muon", lr=1e-2))
    train_steps(model, opt, 3)
    clone = copy.deepcopy(model)
    resumed = make_optimizer(clone, OptimConfig(name="muon", lr=1e-2))
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert train_steps(model, opt, 3) == train_steps(clone, resumed, 3)
