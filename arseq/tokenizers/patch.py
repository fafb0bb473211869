"""Patch tokenizer for images: raster-order patches, each replaced by its nearest codebook vector.

An image is converted to L or RGB, centre-cropped to a square and resized to `size`×`size` (bicubic,
`PIL.ImageOps.fit`), and cut into `patch_size`×`patch_size` patches in raster order. Each patch becomes
the id of its nearest codebook vector (squared error). The codebook is fitted by seeded mini-batch
k-means in torch (`kmeans` says why not scikit-learn's); when the training patches hold no more
distinct vectors than `K`, the distinct vectors themselves are the codebook, so the tokenizer is
lossless on them (8-bit grayscale with K >= 256, or digits' 17 gray levels with K >= 17).
`patch_size: 1` is an iGPT-style colour palette.

Ids: 0, 1, 2 = pad, bos, eos; then one id per codebook vector (sorted dark to bright); then one id per
class label (models from before arseq's shared conditioning; since, the class is a control token of the
core, `arseq.conditioning`, and the tokenizer has no labels). A sequence is ``BOS [label] code... EOS``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence, cast

import numpy as np
import torch
from PIL import Image, ImageOps

from arseq.tokenizers.base import SPECIALS

MODES = ("L", "RGB")


def pick_label(names: Sequence[str], label: str | int) -> str:
    """The class `label` names: a name, or an index when it is an int or a digit string not among the names."""
    name = str(label)
    if name in names:
        return name
    if isinstance(label, int) or name.lstrip("-").isdigit():
        i = int(name)
        if 0 <= i < len(names):
            return names[i]
    raise ValueError(f"unknown class label {label!r}; labels: {', '.join(names) or '(none)'}")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Any pillow image as 8-bit L or RGB.

    Alpha (RGBA, LA, PA, palette transparency) is composited onto white; 16-bit and 32-bit integer images
    are scaled to 8 bits (not clipped); float images are taken as 0..1 when their maximum is <= 1, else
    0..255; CMYK, YCbCr, HSV, LAB and palette images go through pillow's conversion; EXIF orientation is
    applied. Raises ValueError for a mode pillow cannot convert.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            a = a * 255.0 if a.size and a.max() <= 1.0 else a
        elif a.size and a.max() > 255:
            a = a / (257.0 if a.max() <= 65535 else 16843009.0)  # 16-bit or 32-bit full range -> 0..255
        image = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "LAB":  # pillow has no direct LAB -> RGB; go through its colour management
        from PIL import ImageCms

        transform = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
        image = cast(Image.Image, ImageCms.applyTransform(image, transform))  # None only when inPlace=True
    if "A" in image.getbands() or image.mode in ("La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode == "1":
        image = image.convert("L")
    if image.mode not in MODES:
        image = image.convert("RGB")
    return image.convert(mode) if image.mode != mode else image


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays; inf when they are equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def to_patches(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W, C) -> (patches, patch_size*patch_size*C) in raster order; each patch row-major, channels last."""
    h, w, c = pixels.shape
    p = patch_size
    return pixels.reshape(h // p, p, w // p, p, c).transpose(0, 2, 1, 3, 4).reshape(-1, p * p * c)


def from_patches(patches: np.ndarray, size: int, patch_size: int, channels: int) -> np.ndarray:
    p, g = patch_size, size // patch_size
    return patches.reshape(g, g, p, p, channels).transpose(0, 2, 1, 3, 4).reshape(size, size, channels)


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, K) squared distances, via ||x||^2 - 2x.c + ||c||^2 (one matmul)."""
    return (x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)[None, :]


def kmeans(x: torch.Tensor, k: int, *, seed: int = 0, iters: int = 100, batch_size: int = 2048, init_sample: int = 10_000) -> torch.Tensor:
    """Mini-batch k-means (Sculley 2010) with k-means++ initialisation on a sample; returns (k, D) centres.

    Deterministic for a given seed. Centres that win no points for a while are re-seeded on the points
    worst served by the current codebook, so no code id is wasted.

    Why not scikit-learn's (benchmarks/bench_image.py, 1 thread, 3 seeds, medians): `KMeans` (Lloyd) is
    within noise or up to 0.2 dB better in held-out PSNR but costs 5-17x the CPU at the default
    200k-patch cap (palette: 6.8 s vs 0.4 s); `MiniBatchKMeans` is faster on 10k patches but loses
    0.4-0.6 dB on 512-colour palettes; tuned to fix that (no random reassignment, ~100 batches) it
    matches on 2x2 patches and palettes but loses 0.1 dB on 4x4 patches (outside the seed range) at up
    to 1.8x the CPU. Previous-code bits/dim are equal (±0.01) throughout. This one's cost is fixed
    (100 batches) whatever the number of patches, which is what keeps fitting on 200k patches cheap.
    """
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    sample = x[torch.randperm(n, generator=g)[: min(n, init_sample)]]
    # k-means++: each next centre drawn with probability proportional to its squared distance
    centres = torch.empty(k, x.shape[1])
    centres[0] = sample[torch.randint(len(sample), (1,), generator=g)]
    norms = (sample * sample).sum(1)
    d2 = (norms - 2 * sample @ centres[0] + centres[0] @ centres[0]).clamp_min(0)
    for j in range(1, k):
        probs = d2 if d2.sum() > 0 else torch.ones_like(d2)
        centres[j] = sample[torch.multinomial(probs, 1, generator=g)]
        torch.minimum(d2, (norms - 2 * sample @ centres[j] + centres[j] @ centres[j]).clamp_min(0), out=d2)
    counts = torch.zeros(k)
    last_won = torch.zeros(k)
    for step in range(iters):
        batch = x[torch.randint(n, (min(batch_size, n),), generator=g)]
        dist, assign = _sq_dists(batch, centres).min(1)
        won = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(centres).index_add_(0, assign, batch)
        counts += won
        hit = won > 0
        # per-centre learning rate 1/count: the centre is the running mean of every point it has won
        rate = torch.where(hit, won / counts.clamp_min(1), torch.zeros_like(won))
        centres[hit] += rate[hit, None] * (sums[hit] / won[hit, None] - centres[hit])
        last_won[hit] = step
        stale = (step - last_won > 10).nonzero().squeeze(1)
        if len(stale) and step < iters - 10:
            worst = dist.argsort(descending=True)[: len(stale)]
            centres[stale[: len(worst)]] = batch[worst]
            counts[stale] = 0
            last_won[stale] = step
    return centres


MAX_PATCHES = 1 << 20  # tokens per image: 1024 x 1024 pixels at patch_size 1 (a file's size: 100,000 took forever)


class PatchTokenizer:
    kind: ClassVar[str] = "patch"
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(
        self,
        codebook: Sequence[Sequence[int]] | np.ndarray,
        *,
        size: int,
        patch_size: int,
        mode: str,
        labels: Sequence[str] = (),
        lossless: bool = False,
        fit_stats: dict[str, Any] | None = None,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if size < 1 or patch_size < 1 or size % patch_size:
            raise ValueError(f"size {size} must be a positive multiple of patch_size {patch_size}")
        if (size // patch_size) ** 2 > MAX_PATCHES:  # one token per patch: generating an image would never end
            raise ValueError(
                f"size {size} with patch_size {patch_size} makes images of {(size // patch_size) ** 2:,} tokens, more than {MAX_PATCHES:,}"
            )
        self.size, self.patch_size, self.mode = size, patch_size, mode
        self.channels = 1 if mode == "L" else 3
        self.codebook = np.asarray(codebook, dtype=np.uint8).reshape(len(codebook), -1)
        if self.codebook.shape[1] != self.patch_dim or len(self.codebook) == 0:
            raise ValueError(f"codebook must be (K >= 1, {self.patch_dim}), got {self.codebook.shape}")
        self.labels = [str(label) for label in labels]
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("class labels must be distinct")
        self.lossless = lossless  # the codebook holds every distinct training patch: coding them is exact
        self.fit_stats = dict(fit_stats or {})  # how the codebook was fitted and how well it reconstructs
        self._codebook_t = torch.from_numpy(self.codebook.astype(np.float64))

    # ---- geometry ------------------------------------------------------------------------------------
    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.channels

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def dims_per_image(self) -> int:
        """Pixel channels per image: the denominator of bits per dimension."""
        return self.size * self.size * self.channels

    # ---- ids -----------------------------------------------------------------------------------------
    @property
    def code_offset(self) -> int:
        return len(SPECIALS)

    @property
    def label_offset(self) -> int:
        return len(SPECIALS) + len(self.codebook)

    @property
    def vocab_size(self) -> int:
        return self.label_offset + len(self.labels)

    def label_id(self, label: str | int) -> int:
        """Token id of a class label given by name, or by index (see `pick_label`)."""
        return self.label_offset + self.labels.index(pick_label(self.labels, label))

    def is_code(self, ids: np.ndarray) -> np.ndarray:
        return (ids >= self.code_offset) & (ids < self.label_offset)

    # ---- images <-> pixels <-> codes -----------------------------------------------------------------
    def pixels(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """The (size, size, channels) uint8 array the tokenizer actually codes."""
        if isinstance(image, np.ndarray):
            a = image if image.ndim == 3 else image[..., None]
            if a.dtype != np.uint8 or a.shape != (self.size, self.size, self.channels):
                raise ValueError(f"expected a uint8 array of shape {(self.size, self.size, self.channels)}, got {a.dtype} {a.shape}")
            return a
        if min(image.size) < self.patch_size:
            raise ValueError(f"image of {image.size[0]}x{image.size[1]} is smaller than one {self.patch_size}x{self.patch_size} patch")
        a = np.asarray(ImageOps.fit(to_mode(image, self.mode), (self.size, self.size), Image.Resampling.BICUBIC), dtype=np.uint8)
        return a.reshape(self.size, self.size, self.channels)

    def codes(self, pixels: np.ndarray) -> np.ndarray:
        """Nearest codebook index of each patch (exact float64 distances, so equal vectors always match)."""
        x = torch.from_numpy(to_patches(pixels, self.patch_size).astype(np.float64))
        return _sq_dists(x, self._codebook_t).argmin(1).numpy()

    def image(self, pixels: np.ndarray) -> Image.Image:
        return Image.fromarray(pixels[..., 0] if self.channels == 1 else pixels, self.mode)

    # ---- protocol ------------------------------------------------------------------------------------
    def encode(self, image: Image.Image | np.ndarray, label: str | int | None = None) -> list[int]:
        """``BOS [label] codes EOS`` for one image (a PIL image of any mode/size, or pixels())."""
        ids = [self.bos_id]
        if label is not None:
            ids.append(self.label_id(label))
        ids.extend((self.codes(self.pixels(image)) + self.code_offset).tolist())
        ids.append(self.eos_id)
        return ids

    def decode_pixels(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Pixels of the first num_patches code ids; patches never generated are black."""
        arr = np.asarray(ids, dtype=np.int64)
        codes = arr[self.is_code(arr)][: self.num_patches] - self.code_offset
        patches = np.zeros((self.num_patches, self.patch_dim), dtype=np.uint8)
        patches[: len(codes)] = self.codebook[codes]
        return from_patches(patches, self.size, self.patch_size, self.channels)

    def decode(self, ids: Sequence[int]) -> Image.Image:
        return self.image(self.decode_pixels(ids))

    def decode_label(self, ids: Sequence[int] | np.ndarray) -> str | None:
        """The class label named by the first label id in `ids`, if any."""
        for t in ids:
            if self.label_offset <= t < self.vocab_size:
                return self.labels[t - self.label_offset]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "size": self.size,
            "patch_size": self.patch_size,
            "mode": self.mode,
            "labels": list(self.labels),
            "lossless": self.lossless,
            "fit_stats": self.fit_stats,
            "codebook": self.codebook.tolist(),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> PatchTokenizer:
        return cls(
            state["codebook"],
            size=state["size"],
            patch_size=state["patch_size"],
            mode=state["mode"],
            labels=state.get("labels", ()),
            lossless=state.get("lossless", False),
            fit_stats=state.get("fit_stats"),
        )

    # ---- fitting -------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        images: Sequence[np.ndarray],
        *,
        size: int,
        patch_size: int,
        mode: str,
        codebook_size: int,
        labels: Sequence[str] = (),
        seed: int = 0,
        max_patches: int = 200_000,
        iters: int = 100,
    ) -> PatchTokenizer:
        """Fit the codebook on pixel arrays (each from `pixels()`).

        If the patches hold at most `codebook_size` distinct vectors they become the codebook (lossless);
        otherwise k-means runs on at most `max_patches` patches drawn with `seed`.
        """
        if codebook_size < 1:
            raise ValueError("codebook_size must be >= 1")
        if not len(images):
            raise ValueError("no images to fit the codebook on")
        x = np.concatenate([to_patches(p, patch_size) for p in images])
        distinct = np.unique(x, axis=0)
        lossless = len(distinct) <= codebook_size
        if lossless:
            codebook = distinct
        else:
            rng = np.random.default_rng(seed)
            if len(x) > max_patches:
                x = x[rng.choice(len(x), max_patches, replace=False)]
            centres = kmeans(torch.from_numpy(x.astype(np.float32)), codebook_size, seed=seed, iters=iters)
            codebook = np.unique(np.clip(np.rint(centres.numpy()), 0, 255).astype(np.uint8), axis=0)
        order = np.argsort(codebook.astype(np.int64).sum(1), kind="stable")  # dark to bright: ids read as intensity
        return cls(codebook[order], size=size, patch_size=patch_size, mode=mode, labels=labels, lossless=lossless)
