"""Image infilling through `generate --keep-rows`: the kept rows come back byte for byte, the others repainted."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from arseq.cli import main

TINY = """
seed: 7
modality: {{name: image, mode: L, size: 8, patch_size: 1, codebook_size: 17}}
data: {{source: digits, val_fraction: 0.1653, block_size: 72, batch_size: 16, fim_rate: 0.5}}
model: {{n_layer: 1, n_head: 2, d_model: 32}}
optim: {{lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 5}}
trainer: {{max_steps: 10, val_check_interval: 10, check_val_every_n_epoch: null, limit_val_batches: 2, accelerator: cpu,
  enable_progress_bar: false, enable_model_summary: false, logger: false, default_root_dir: {root}}}
"""


@pytest.mark.slow
def test_keep_rows_repaints_only_the_gap(tmp_path, capsys):
    from sklearn.datasets import load_digits

    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.format(root=tmp_path / "runs"))
    assert main(["train", "--config", str(config)]) == 0
    ckpt = str(next((tmp_path / "runs").rglob("last.ckpt")))
    digit = np.rint(load_digits().images[0] * 255 / 16).astype(np.uint8)
    prompt = tmp_path / "zero.png"
    Image.fromarray(digit, "L").save(prompt)
    out = tmp_path / "filled"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                ckpt,
                "--prompt",
                str(prompt),
                "--keep-rows",
                "1-2,6-8",
                "--label",
                "0",
                "--num-samples",
                "3",
                "--seed",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    samples = sorted(out.glob("sample_*.png"))
    assert len(samples) == 3 and (out / "completion.png").exists()
    for path in samples:
        pixels = np.asarray(Image.open(path))
        assert pixels.shape == (8, 8)
        assert np.array_equal(pixels[:2], digit[:2]) and np.array_equal(pixels[5:], digit[5:])
    for flags, said in (
        (["--keep-rows", "1-2,4,7-8"], "one run"),
        (["--keep-rows", "1-9"], "outside"),
        (["--keep-rows", "1-8"], "nothing to regenerate"),
    ):
        assert main(["generate", "--checkpoint", ckpt, "--prompt", str(prompt), *flags]) == 2
        err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("arseq generate: error")]
        assert len(err) == 1 and said in err[0] and "--keep-rows" in err[0]
