"""Control tokens: learned from the data, hidden from the modality, obeyed by a trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from Bio import SeqIO

import arseq
from arseq.cli import main
from arseq.conditioning import Controls
from arseq.data.loader import RandomWindows
from arseq.errors import DataError


def controls() -> Controls:
    return Controls.learn(
        10, ["tag", "size", "one"], [{"tag": "b", "size": "big", "one": "x"}, {"tag": "a", "one": "x"}, {"tag": "b"}, {"size": "small"}], drop=0.5
    )


def test_learned_values_ids_and_parsing():
    c = controls()
    assert c.fields == {"tag": ["a", "b"], "size": ["big", "small"]} and c.size == 6 and c.width == 2  # "one": one value, no field
    assert c.counts == {"tag": {"a": 1, "b": 2}, "size": {"big": 1, "small": 1}}
    assert [c.unknown_id("tag"), c.value_id("tag", "a"), c.value_id("tag", "b"), c.unknown_id("size"), c.value_id("size", "big")] == [
        10,
        11,
        12,
        13,
        14,
    ]
    assert c.ids({"tag": "b"}) == [12, 13] and c.ids({"tag": "never seen", "size": "big"}) == [10, 14]
    assert c.ids(c.given(["tag=a"])) == [11, 13] and c.ids(c.given(['size="big"', "tag=b"])) == [12, 14]
    assert c.read([0, 12, 14, 5]) == {"size": "big", "tag": "b"} and c.read([0, 10, 13, 5]) == {} and c.read([0, 11, 13]) == {"tag": "a"}
    for bad, why in (["tag"], "FIELD=VALUE"), (["colour=red"], "knows the condition field"), (["tag=c"], "known: a, b"):
        with pytest.raises(DataError, match=why):
            c.given(bad)
    assert c.insert([1, 5, 6, 2], [12, 13]) == [1, 12, 13, 5, 6, 2] and c.strip([1, 12, 13, 5, 6, 2]) == [1, 5, 6, 2]
    assert Controls.from_dict(json.loads(json.dumps(c.to_dict()))) == c and Controls.from_dict(None) is None
    assert Controls.learn(10, ["tag"], [{}, {"size": "x"}], 0.1) is None


def test_hidden_controls_never_reach_the_modality_constraint():
    c = controls()
    seen: list[list[int]] = []

    def inner(rows: list[list[int]]) -> torch.Tensor:  # stateful, like the modalities' constraints
        seen.append(list(rows[0]))
        mask = torch.zeros(len(rows), 10, dtype=torch.bool)
        mask[:, 3 + len(rows[0]) % 2] = True
        return mask

    row = [1, 12, 13, 5]
    hide = c.hide(inner)
    mask = hide([row])
    assert mask.shape == (1, 16) and not mask[0, 10:].any() and mask[0, 3] and seen[-1] == [1, 5]
    row += [6, 7]
    hide([row])
    assert seen[-1] == [1, 5, 6, 7]
    del row[-2:]  # rejected tokens rolled back (speculative decoding)
    hide([row])
    assert seen[-1] == [1, 5]
    assert c.hide(None)([[1, 12, 13]])[0].tolist() == [True] * 10 + [False] * 6
    row += [14, 6]  # a control id sampled without the constraint (arseq analyze drift replays it) stays hidden
    hide([row])
    assert seen[-1] == [1, 5, 6]
    del row[-2:]
    hide([row])
    assert seen[-1] == [1, 5]


def test_training_hides_conditions_at_the_drop_rate(tmp_path):
    c = controls()
    stream = np.tile(np.array([1, 12, 13, 5, 6, 2], dtype=np.uint16), 2000)
    np.save(tmp_path / "train.npy", stream)
    np.save(tmp_path / "train_offsets.npy", np.arange(0, len(stream) + 1, 6))
    for drop, low, high in ((0.0, 0.0, 0.0), (0.5, 0.45, 0.55), (1.0, 1.0, 1.0)):
        c.drop = drop
        x, _ = next(iter(RandomWindows(tmp_path / "train.npy", 60, 64, seed=0, controls=c)))
        tags = x[(x == 12) | (x == 10)]
        hidden = float((tags == 10).float().mean())
        assert low <= hidden <= high, (drop, hidden)
        assert not ((x == 11) | (x == 14)).any()  # no value ever turns into another value
        assert int((x == 13).sum() + (x == 10).sum() + (x == 12).sum()) > 0


def test_every_training_window_starts_with_its_items_head(tmp_path):
    """Windows drawn inside an item longer than a window start with its BOS and control tokens, then go on from
    where they were drawn; the first token after the head is no target there (an item starts after its head)."""
    c = controls()
    c.drop = 0.0
    items = [[1, 11 + i % 2, 13 + i % 2, *range(100 * i + 20, 100 * i + 90), 2] for i in range(1, 9)]  # 74 tokens each
    np.save(tmp_path / "train.npy", np.concatenate(items).astype(np.uint16))
    np.save(tmp_path / "train_offsets.npy", np.cumsum([0] + [len(it) for it in items]))
    stream = np.concatenate(items).tolist()
    x, y = next(iter(RandomWindows(tmp_path / "train.npy", 24, 256, seed=0, controls=c)))
    assert c.head == 3
    inside = 0
    for xi, yi in zip(x.tolist(), y.tolist()):
        m = next(t for t in range(3, 24) if xi[t] >= 20)  # an item's own token: where the rest was drawn
        j = stream.index(xi[m]) - (m - 3)
        item = items[j // 74]
        assert xi[:3] == item[:3] and xi[3:] == stream[j : j + 21]  # its item's BOS and controls, then a stretch
        masked = [t for t in range(23) if yi[t] == -100]
        assert all(yi[t] == xi[t + 1] for t in range(23) if t not in masked)
        if xi[3] != item[3]:
            inside += 1
            assert masked == [2]
        else:
            assert masked == []
    assert 150 < inside < 256  # most windows start inside an item
    short = [it[:3] + it[3:10] + [2] for it in items]  # 11 tokens: items that fit a window are left as they are
    np.save(tmp_path / "train.npy", np.concatenate(short).astype(np.uint16))
    np.save(tmp_path / "train_offsets.npy", np.cumsum([0] + [len(it) for it in short]))
    x, y = next(iter(RandomWindows(tmp_path / "train.npy", 24, 64, seed=0, controls=c)))
    flat = np.concatenate(short).tolist()
    assert all(any(flat[j : j + 24] == xi for j in range(len(flat))) for xi in x.tolist()) and (y != -100).all()
    old = Controls.from_dict({k: v for k, v in c.to_dict().items() if k != "every_window"})
    assert old.head == 0  # a model trained before: heads only at the start of each item (sampling does not keep them)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """Two tags that decide the whole protein: 'polyA' proteins are AAAA..., 'polyW' ones WWWW..."""
    root = tmp_path_factory.mktemp("tagged")
    rng = np.random.default_rng(0)
    records = []
    for i in range(120):
        tag = ("polyA", "polyW")[i % 2]
        records.append(f">p{i} {tag} extra\n{tag[-1] * int(rng.integers(20, 30))}")
    records += [f">untagged{i}\nMAWAW" for i in range(4)]
    (root / "train.fasta").write_text("\n".join(records) + "\n")
    config = {
        "seed": 0,
        "modality": {"name": "protein", "deduplicate": False},
        "data": {"paths": str(root / "train.fasta"), "val_fraction": 0.2, "block_size": 48, "batch_size": 16},
        "model": {"n_layer": 1, "n_head": 2, "d_model": 32},
        "optim": {"lr": 1.0e-2, "min_lr": 1.0e-3, "warmup_steps": 5},
        "trainer": {
            "max_steps": 80,
            "val_check_interval": 80,
            "check_val_every_n_epoch": None,
            "limit_val_batches": 2,
            "accelerator": "cpu",
            "devices": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "default_root_dir": str(root / "runs"),
        },
    }
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(root / "c.yaml")]) == 0
    return root, next((root / "runs").rglob("last.ckpt"))


def test_prepare_reports_conditions_and_items_without(tagged, capsys):
    root, _ = tagged
    assert main(["prepare", "--config", str(root / "c.yaml")]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["conditions"]["tag"] == {"values": {"polyA": 60, "polyW": 60}, "items_without": 4}
    assert stats["vocab_size"] == 28  # the tokenizer's ids; the model adds 3 control tokens


def test_a_conditioned_model_obeys_and_is_measured(tagged, tmp_path, capsys):
    root, ckpt = tagged
    for tag, residue in (("polyA", "A"), ("polyW", "W")):
        out = tmp_path / f"{tag}.fasta"
        assert (
            main(
                [
                    "generate",
                    "--checkpoint",
                    str(ckpt),
                    "--cond",
                    f"tag={tag}",
                    "--num-samples",
                    "16",
                    "--seed",
                    "0",
                    "--max-length",
                    "25",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        seqs = [str(r.seq) for r in SeqIO.parse(out, "fasta")]
        share = np.mean([s.count(residue) / max(1, len(s)) for s in seqs])
        assert len(seqs) == 16 and share > 0.9, (tag, seqs)  # unconditioned: ~0.5
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(ckpt)]) == 0
    report = json.loads(capsys.readouterr().out)["conditions"]["tag"]
    assert report["items"] > 10 and report["accuracy"] > 0.9 and report["majority_accuracy"] < 0.75
    assert report["perplexity_true"] < report["perplexity_unknown"]
    assert repr(arseq.load(ckpt)).endswith(", conditioned on tag)")


@pytest.mark.parametrize("cond, why", [("colour=red", "knows the condition field"), ("tag=polyQ", "known: polyA, polyW"), ("tag", "FIELD=VALUE")])
def test_bad_conditions_are_one_line(tagged, cond, why, capsys):
    _, ckpt = tagged
    assert main(["generate", "--checkpoint", str(ckpt), "--cond", cond]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0]


def test_a_model_without_conditions_refuses_cond(trained, capsys):
    assert main(["generate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--cond", "tag=x"]) == 2
    assert "trained without conditions" in capsys.readouterr().err


def test_score_gives_each_item_its_own_conditions(tagged, capsys):
    root, ckpt = tagged
    capsys.readouterr()
    assert main(["score", "--checkpoint", str(ckpt), "--data.paths", str(root / "train.fasta")]) == 0
    result = json.loads(capsys.readouterr().out)
    residues = [len(r.seq) + 1 for r in SeqIO.parse(root / "train.fasta", "fasta")]  # + EOS; control tokens not scored
    assert [row["tokens"] for row in result["items"]] == residues
    tagged_ppl = [row["perplexity"] for row in result["items"][:120]]
    assert np.median(tagged_ppl) < 1.5  # given its tag, a protein is nearly certain


def test_speculative_decoding_of_a_conditioned_model_equals_plain(tagged, capsys):
    _, ckpt = tagged
    base = ["generate", "--checkpoint", str(ckpt), "--cond", "tag=polyW", "--num-samples", "3", "--temperature", "0", "--max-length", "25"]
    assert main(base) == 0
    plain = capsys.readouterr().out
    assert main(base + ["--draft", "ngram"]) == 0
    assert capsys.readouterr().out == plain and plain.count(">design") == 3


def test_guidance_follows_the_guided_distribution_token_for_token():
    """Greedy with --guidance s picks argmax(log p_u + s (log p_c - log p_u)) at every step, p_c given the
    conditioned prompt, p_u the guide prompt (a different length: left-padded), both fed the chosen tokens
    (the pad id excluded)."""
    from arseq.decode import SamplingConfig, generate, guided
    from arseq.models.transformer import Transformer, TransformerConfig

    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=12, max_seq_len=32, n_layer=1, n_head=2, d_model=16)).eval()
    with torch.no_grad():
        for p in model.parameters():  # large random weights: a model that does not just repeat its last token
            p.normal_(0, 0.5)
    cond, guide = [[1, 9, 4], [1, 10, 4]], [[1, 4], [1, 4]]
    cfg = SamplingConfig(max_new_tokens=10, temperature=0, guidance=2.5)
    out = generate(model, cond, cfg, guide=guide).tokens
    for c, g, tokens in zip(cond, guide, out):
        for t in range(len(tokens)):
            with torch.no_grad():
                lc = model(torch.tensor([c + tokens[:t]]))[:, -1]
                lu = model(torch.tensor([g + tokens[:t]]))[:, -1]
            scores = guided(lc, lu, 2.5)
            scores[:, 0] = float("-inf")  # the pad id: never a sample's token
            assert int(scores.argmax()) == tokens[t]
    plain = generate(model, cond, SamplingConfig(max_new_tokens=10, temperature=0)).tokens
    assert generate(model, cond, SamplingConfig(max_new_tokens=10, temperature=0, guidance=1.0), guide=guide).tokens == plain
    assert out != plain  # guidance changed something: the test is not vacuous


def test_guidance_obeys_and_needs_a_condition(tagged, tmp_path, capsys):
    root, ckpt = tagged
    out = tmp_path / "w.fasta"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(ckpt),
                "--cond",
                "tag=polyW",
                "--guidance",
                "2",
                "--num-samples",
                "4",
                "--seed",
                "0",
                "--max-length",
                "25",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    seqs = [str(r.seq) for r in SeqIO.parse(out, "fasta")]
    assert len(seqs) == 4 and np.mean([s.count("W") / max(1, len(s)) for s in seqs]) > 0.9
    capsys.readouterr()
    for extra, why in ((["--guidance", "2"], "no condition to follow"), (["--cond", "tag=polyW", "--guidance", "2", "--draft", "ngram"], "--draft")):
        assert main(["generate", "--checkpoint", str(ckpt), "--max-length", "5", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0]


def test_guidance_on_a_model_without_conditions_is_one_line(trained, capsys):
    assert main(["generate", "--checkpoint", str(trained / "checkpoints" / "last.ckpt"), "--guidance", "2"]) == 2
    assert "trained without conditions" in capsys.readouterr().err
