"""Image codebook benchmark: arseq's k-means against scikit-learn's, side by side, on the same patches.

Patches come from random crops of scikit-learn's two bundled photos (china.jpg, flower.jpg), resized to
32×32; crops from one half of each photo fit the codebook, crops from the other half are held out.
For each geometry and fit size, each method fits `--seeds` codebooks on the same seeded patch sample;
we report medians (and the PSNR range, as the noise) of: CPU and wall seconds of the fit, codebook
entries used, held-out reconstruction PSNR, and the held-out bits/dim of the previous-code count
baseline (`arseq.modalities.image.baseline_bits`, fitted on the training crops' codes): a cheap stand-in
for how hard the codes are to model. Prints one JSON object. Target: fit on 10k patches in <= 5 s of CPU.

    PYTHONPATH=. python benchmarks/bench_image.py [--threads 1] [--crops 400] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image
from threadpoolctl import threadpool_limits

from arseq.modalities.image.metrics import baseline_bits
from arseq.tokenizers.patch import PatchTokenizer, kmeans, psnr, to_patches

# (geometry, patch size, codebook size) and the fit sizes: 10k, and the modality's default cap of 200k
# (or every training patch, when there are fewer)
GEOMETRIES = (("patch2_k512", 2, 512), ("patch4_k1024", 4, 1024), ("palette_k512", 1, 512))
FIT_PATCHES = (10_000, 200_000)


def crops(photos: list[np.ndarray], n: int, top: bool, seed: int) -> list[np.ndarray]:
    """n random square crops (48..160 px) from the top or bottom half of the photos, resized to 32×32."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        photo = photos[i % len(photos)]
        h = photo.shape[0] // 2
        side = int(rng.integers(48, 160))
        y = int(rng.integers(0, h - side)) + (0 if top else h)
        x = int(rng.integers(0, photo.shape[1] - side))
        im = Image.fromarray(photo[y : y + side, x : x + side]).resize((32, 32), Image.Resampling.BICUBIC)
        out.append(np.asarray(im))
    return out


def methods(k: int) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """Centre fitters, (patches float32, seed) -> (k, D) centres."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    return {
        "arseq_minibatch": lambda x, seed: kmeans(torch.from_numpy(x), k, seed=seed).numpy(),
        "sklearn_kmeans": lambda x, seed: KMeans(k, n_init=1, random_state=seed).fit(x).cluster_centers_,
        "sklearn_minibatch": lambda x, seed: MiniBatchKMeans(k, n_init=1, batch_size=2048, random_state=seed).fit(x).cluster_centers_,
        # tuned towards arseq's: k-means++ on 10k points, ~100 batches of 2048 whatever the data size, no
        # random reassignment (better palettes, worse 4x4 patches)
        "sklearn_minibatch_tuned": lambda x, seed: (
            MiniBatchKMeans(
                k,
                n_init=1,
                batch_size=2048,
                init_size=10_000,
                reassignment_ratio=0.0,
                max_iter=max(1, 100 * 2048 // len(x)),
                max_no_improvement=None,
                random_state=seed,
            )
            .fit(x)
            .cluster_centers_
        ),
    }


def evaluate(centres: np.ndarray, patch: int, fit_imgs: list[np.ndarray], held: list[np.ndarray]) -> dict[str, float]:
    """The codebook `PatchTokenizer.fit` would keep (rounded, distinct), scored on the held-out crops."""
    tok = PatchTokenizer(np.unique(np.clip(np.rint(centres), 0, 255).astype(np.uint8), axis=0), size=32, patch_size=patch, mode="RGB")
    train, val = np.stack([tok.codes(im) for im in fit_imgs]), np.stack([tok.codes(im) for im in held])
    bits = baseline_bits(train, val, len(tok.codebook))["previous_pixel"]
    return {
        "codebook": len(tok.codebook),
        "psnr": float(np.mean([psnr(tok.decode_pixels(tok.encode(im)), im) for im in held])),
        "prev_code_bits_per_dim": bits / tok.dims_per_image,
    }


def compare(patch: int, k: int, n: int, seeds: int, fit_imgs: list[np.ndarray], held: list[np.ndarray]) -> dict[str, object]:
    x = np.concatenate([to_patches(im, patch) for im in fit_imgs]).astype(np.float32)
    if len(x) > n:
        x = x[np.random.default_rng(0).choice(len(x), n, replace=False)]
    out: dict[str, object] = {"fit_patches": len(x)}
    for name, fit in methods(k).items():
        runs = []
        for seed in range(seeds):
            wall, cpu = time.perf_counter(), time.process_time()
            centres = fit(x, seed)
            runs.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu, **evaluate(centres, patch, fit_imgs, held)})
        med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731, B023  (used in this iteration)
        out[name] = {
            "fit_cpu_s": round(med("cpu"), 2),
            "fit_wall_s": round(med("wall"), 2),
            "codebook": int(med("codebook")),
            "heldout_psnr_db": round(med("psnr"), 2),
            "heldout_psnr_range_db": [round(min(r["psnr"] for r in runs), 2), round(max(r["psnr"] for r in runs), 2)],
            "prev_code_bits_per_dim": round(med("prev_code_bits_per_dim"), 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for torch and scikit-learn")
    ap.add_argument("--crops", type=int, default=400, help="32x32 crops per split")
    ap.add_argument("--seeds", type=int, default=3, help="fits per method and setting (medians are reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p) for p in load_sample_images().images]
    fit_imgs, held = crops(photos, args.crops, True, 0), crops(photos, args.crops, False, 1)
    result: dict[str, object] = {"threads": args.threads, "seeds": args.seeds, "fit_images": len(fit_imgs), "heldout_images": len(held)}
    with threadpool_limits(args.threads):
        for name, patch, k in GEOMETRIES:
            sizes = sorted({min(n, len(fit_imgs) * (32 // patch) ** 2) for n in FIT_PATCHES})
            for n in sizes:
                result[f"{name}_{n // 1000}k"] = compare(patch, k, n, args.seeds, fit_imgs, held)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
