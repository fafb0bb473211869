"""Image tokenizer benchmark: codebook fit time on 10k patches and reconstruction PSNR on held-out crops.

Patches come from random crops of scikit-learn's two bundled photos (china.jpg, flower.jpg), resized to
32×32; crops from one half of each photo fit the codebook, crops from the other half are held out.
Prints one JSON object. Target: fit on 10k patches in <= 5 s of CPU.

    PYTHONPATH=. python benchmarks/bench_image.py [--threads 1] [--crops 400]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from arseq.tokenizers.patch import PatchTokenizer, kmeans, psnr, to_patches


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


def timed_fit(images: list[np.ndarray], patch_size: int, k: int, max_patches: int) -> tuple[PatchTokenizer, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    tok = PatchTokenizer.fit(images, size=32, patch_size=patch_size, mode="RGB", codebook_size=k, max_patches=max_patches)
    return tok, time.perf_counter() - wall, time.process_time() - cpu


def held_out_psnr(tok: PatchTokenizer, images: list[np.ndarray]) -> float:
    return float(np.mean([psnr(tok.decode_pixels(tok.encode(im)), im) for im in images]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--crops", type=int, default=400, help="32x32 crops per split")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p) for p in load_sample_images().images]
    fit_imgs, held = crops(photos, args.crops, True, 0), crops(photos, args.crops, False, 1)
    result: dict[str, object] = {"threads": args.threads, "fit_images": len(fit_imgs), "heldout_images": len(held)}
    for name, patch, k, n in (("patch2_k512", 2, 512, 10_000), ("patch4_k1024", 4, 1024, 10_000), ("palette_k512", 1, 512, 10_000)):
        tok, wall, cpu = timed_fit(fit_imgs, patch, k, n)
        result[name] = {"fit_patches": n, "fit_wall_s": round(wall, 2), "fit_cpu_s": round(cpu, 2),
                        "codebook": len(tok.codebook), "tokens_per_image": tok.num_patches,
                        "heldout_psnr_db": round(held_out_psnr(tok, held), 2)}
    # k-means quality against scikit-learn's MiniBatchKMeans on the same 10k 2x2 patches (mean squared error)
    x = np.concatenate([to_patches(im, 2) for im in fit_imgs]).astype(np.float32)
    x = x[np.random.default_rng(0).choice(len(x), 10_000, replace=False)]
    ours = kmeans(torch.from_numpy(x), 512, seed=0)
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    sk = MiniBatchKMeans(512, random_state=0, n_init=1, batch_size=2048).fit(x)
    sk_s = time.perf_counter() - t0
    mse = lambda c: float(torch.cdist(torch.from_numpy(x), torch.as_tensor(c, dtype=torch.float32)).min(1).values.pow(2).mean())
    result["kmeans_mse_per_patch"] = {"arseq": round(mse(ours), 1), "sklearn_minibatch": round(mse(sk.cluster_centers_), 1),
                                      "sklearn_wall_s": round(sk_s, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
