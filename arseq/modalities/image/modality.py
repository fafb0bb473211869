"""Images: patch-codebook tokens in raster order, class-conditional sampling and image completion.

Data: `data.source: digits` is scikit-learn's bundled 8×8 digits (1,797 images, labels 0-9). Their 17
gray levels 0..16 are mapped to 8-bit values round(v * 255 / 16), so with `patch_size: 1` and
`codebook_size >= 17` the 17 levels are the codebook and tokenization is lossless. `data.paths` takes
folders of images; when the files sit in subfolders of a common folder, the first subfolder name is
the class label (torchvision's ImageFolder layout). Any pillow mode is accepted (see `to_mode`: alpha on
white, 16-bit scaled, CMYK/palette converted); animated images use their first frame.

A sequence is ``BOS code... EOS``; with `conditional` on and labelled data the class is the condition
field `label` (a control token after BOS, `arseq.conditioning`: `--label 7` is `--cond label=7`; trained
with a drop rate, so the same model also samples without one). Sampling is constrained to exactly that
shape, so every sample is a full image. `--prompt IMAGE --prompt-rows R` keeps the image's top R rows of
patches (token rows; pixel rows in palette mode, `patch_size: 1`) and samples the rest; without
`--label`, the samples cycle through the classes. Kept rows are the tokenizer's reconstruction, hence
pixel-exact when it is lossless. `evaluate --cond label=L` reads each sample's class back with a logistic
regression fitted on the training images (`condition_values`). Models from before the shared conditioning
keep the label as a tokenizer token (``BOS label code... EOS``) and still load and sample.

`evaluate` adds `bits_per_dim`: the model's NLL of every predicted token (label and EOS included, so an
upper bound on -log2 p(image)) per pixel channel, next to count baselines fitted on the training split
and scored on the same held-out images. For a lossy codebook it measures the codes, not the pixels.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from arseq.modalities import (
    Constraint,
    DataError,
    EvalInputs,
    Example,
    Modality,
    OutputFiles,
    Plan,
    Request,
    Sample,
    Skipped,
    TokenSeqs,
)
from arseq.modalities.image.codebook import fit_codebook
from arseq.modalities.image.evaluation import classified_labels, image_report, sample_figures
from arseq.modalities.image.files import natural_order, open_image
from arseq.modalities.image.infill import completed, infill_plan, row_cuts
from arseq.modalities.image.metrics import psnr_from_mse
from arseq.modalities.image.reading import empty_class_folders, encoded_files, geometry, image_items
from arseq.modalities.image.render import ascii_art, tile
from arseq.tokenizers.base import Tokenizer
from arseq.tokenizers.patch import MAX_PATCHES, PatchTokenizer, pick_label


def _patch_tokenizer(tokenizer: Tokenizer) -> PatchTokenizer:
    """The tokenizer a hook is given (the plugin API says any `Tokenizer`), as the one this modality makes."""
    if not isinstance(tokenizer, PatchTokenizer):
        raise TypeError(f"the image modality works with a patch tokenizer, not {type(tokenizer).__name__}")
    return tokenizer


@dataclass
class ImageGenerate:
    """image options

    Args:
        label: class to sample (name, or index into the labels)
        prompt_rows: with --prompt IMAGE: rows of patches kept from its top (pixel rows when patch_size is 1); default half the image
        keep_rows: with --prompt IMAGE: patch rows kept (e.g. 1-3,7-8), the others repainted to join them (needs data.fim_rate > 0)
    """

    label: str | None = None
    prompt_rows: int | None = None
    keep_rows: str | None = None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:40] or "_"


def _encoded(tokenizer: PatchTokenizer, label_token: bool, pixels: np.ndarray, label: str | None) -> tuple[Any, float]:
    """An image's tokens and the mean squared error of their reconstruction (in a worker: `read`)."""
    tokens = tokenizer.encode(pixels, label if label_token else None)
    rec = tokenizer.decode_pixels(tokens)
    return tokens, float(np.mean((rec.astype(np.float64) - pixels) ** 2))


# What --out NAME.EXT may name: formats pillow writes from L and RGB images. A folder gets PNG (lossless).
WRITTEN = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}


def _saved(image: Image.Image, image_format: str) -> Callable[[Path], None]:
    return lambda path: image.save(path, format=image_format)


class ImageModality(Modality):
    """Images as raster sequences of patch codes.

    Args:
        mode: "L" (grayscale) or "RGB".
        size: images are resized (shorter side) and centre-cropped to size×size pixels.
        patch_size: pixels per patch side; 1 = one token per pixel (a colour palette, as in iGPT).
        codebook_size: K, the most codebook vectors; fewer when the training patches have fewer distinct
            values (then the codebook is exactly those values: lossless).
        conditional: condition on the class (field `label`) when the data has labels.
        codebook_seed: seed of the k-means fit and of its held-out images.
        max_fit_patches: k-means runs on at most this many training patches.
    """

    name = "image"
    tokenizer_kinds = {PatchTokenizer.kind: PatchTokenizer}
    condition_fields = {"label": "the class: the digit, or the image's class folder (ImageFolder layout)"}
    suffixes = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm")

    def __init__(
        self,
        mode: str = "L",
        size: int = 32,
        patch_size: int = 1,
        codebook_size: int = 256,
        conditional: bool = True,
        codebook_seed: int = 0,
        max_fit_patches: int = 200_000,
    ):
        if mode not in ("L", "RGB"):
            raise DataError(f"modality.mode must be 'L' or 'RGB', got {mode!r}")
        if size < 1 or patch_size < 1 or size % patch_size:
            raise DataError(f"modality.size ({size}) must be a positive multiple of modality.patch_size ({patch_size})")
        if (size // patch_size) ** 2 > MAX_PATCHES:
            raise DataError(
                f"modality.size {size} with modality.patch_size {patch_size} makes images of "
                f"{(size // patch_size) ** 2:,} tokens, more than {MAX_PATCHES:,}"
            )
        if codebook_size < 1 or max_fit_patches < 1:
            raise DataError("modality.codebook_size and modality.max_fit_patches must be >= 1")
        self.mode, self.size, self.patch_size = mode, size, patch_size
        self.codebook_size, self.conditional = codebook_size, conditional
        self.codebook_seed, self.max_fit_patches = codebook_seed, max_fit_patches

    def demo_config(self, tmp_dir: Path) -> dict[str, Any]:
        """The bundled 8×8 digits, lossless: no files to write."""
        return {"modality": {"mode": "L", "size": 8, "patch_size": 1, "codebook_size": 17}, "data": {"source": "digits", "block_size": 80}}

    # ---- reading ---------------------------------------------------------------------------------
    def build_tokenizer(self, files: list[Path], source: str | None) -> PatchTokenizer:
        """Fit the codebook on every usable image; `codebook.fit_codebook` also measures how it generalises."""
        found = list(image_items(files, source, None, self._geometry(), self.conditional))
        items = [(p, label) for _, p, label, _ in found if p is not None]
        if not items:
            causes = "; ".join(f"{name}: {problem}" for name, _, _, problem in found[:3])
            more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
            raise DataError(f"no usable image among {len(files)} files ({causes}{more})" if files else "no images to fit the tokenizer on")
        fit = partial(
            PatchTokenizer.fit,
            size=self.size,
            patch_size=self.patch_size,
            mode=self.mode,
            codebook_size=self.codebook_size,
            seed=self.codebook_seed,
            max_patches=self.max_fit_patches,
        )
        return fit_codebook([p for p, _ in items], fit, self.codebook_seed)

    def _geometry(self) -> PatchTokenizer:
        return geometry(self.size, self.patch_size, self.mode)

    def read(self, files: list[Path], source: str | None, tokenizer: Tokenizer, check_roundtrip: bool = False) -> Iterator[Example | Skipped]:
        tokenizer = _patch_tokenizer(tokenizer)
        labels = tokenizer.labels if self.conditional else []  # a tokenizer with labels: a model from before conditions
        if source is None and self.conditional:
            yield from empty_class_folders(files)
        encode = partial(_encoded, tokenizer, bool(labels))
        if source is None:
            found = encoded_files(files, labels or None, self._geometry(), self.conditional, encode)
        else:
            found = (
                (name, encode(p, label) if p is not None else None, label, None)  # a source's items always have pixels
                for name, p, label, _ in image_items(files, source, labels or None, self._geometry(), self.conditional)
            )
        for name, result, label, problem in found:
            if result is None:
                yield Skipped(name, problem or "unreadable")
                continue
            tokens, sq = result
            yield Example(
                tokens,
                name,
                exact=bool(sq == 0) if check_roundtrip else None,
                info={"sq_err": sq},
                conditions={"label": label} if label is not None and not labels else {},
            )

    def summarize(self, tokenizer: Tokenizer, examples: list[Example]) -> dict[str, Any]:
        tokenizer = _patch_tokenizer(tokenizer)
        counts = Counter(e.conditions.get("label") or tokenizer.decode_label(e.tokens) for e in examples)
        mse = float(np.mean([e.info.get("sq_err", 0.0) for e in examples])) if examples else 0.0
        return {
            "images": len(examples),
            "image": f"{tokenizer.size}x{tokenizer.size} {tokenizer.mode}, {tokenizer.patch_size}x{tokenizer.patch_size} patches",
            "tokens_per_image": tokenizer.num_patches,
            "codebook_size": len(tokenizer.codebook),
            "codebook_lossless": tokenizer.lossless,
            "reconstruction_psnr_db": psnr_from_mse(mse),
            "codebook_fit": tokenizer.fit_stats,
            "labels": {name: counts[name] for name in sorted(filter(None, counts), key=natural_order)},
        }

    def fim_cuts(self, tokenizer: Tokenizer, tokens: np.ndarray, start: int = 0) -> np.ndarray:
        """Patch rows: fill-in-the-middle learns whole rows, the unit `--keep-rows` repaints."""
        tokenizer = _patch_tokenizer(tokenizer)
        return row_cuts(tokenizer, tokens, start)

    # ---- generation ------------------------------------------------------------------------------
    generate_options = ImageGenerate
    # Samples asked for a digit show it 90-93 % of the time with guidance 1.5 at temperature 1 (the shipped
    # digits model, four seeds), 85-89 % unguided; sharper settings (temperature 0.7, guidance 2: 87-90 %)
    # cost the "1"s, most then read as 4s (benchmarks/bench_conditioning.py, README).
    conditioned_sampling = {"guidance": 1.5}

    def plan(self, tokenizer: Tokenizer, request: Request) -> Plan:
        """--prompt IMAGE keeps its top rows and samples the rest; the constraint ends samples exactly."""
        tokenizer = _patch_tokenizer(tokenizer)
        tok, opts = tokenizer, request.options
        prompt = self._prompt_pixels(tok, request.prompt_file() if request.prompt else None, opts.prompt_rows)
        kept: list[int] = []
        if prompt is not None:
            pixels, rows = prompt
            kept = (tok.codes(pixels)[: rows * tok.grid] + tok.code_offset).tolist()
        labels = self._labels(tok, request, prompt is not None)
        if opts.keep_rows is not None:
            return infill_plan(tok, request, prompt, labels)
        if tok.labels:  # a model from before conditions: the label is a token of the tokenizer
            heads = [[tok.label_id(label)] if label else [] for label in labels]
            return Plan(
                [[tok.bos_id] + head + kept for head in heads],
                constraint=partial(self._constraint, tok),
                parsed=prompt,
                new_tokens=tok.num_patches + 2,
            )  # label + every patch + EOS: the constraint ends it exactly
        return Plan(
            [[tok.bos_id] + kept for _ in labels],
            constraint=partial(self._constraint, tok),
            parsed=prompt,
            new_tokens=tok.num_patches + 1,
            conditions=[{"label": label} if label else {} for label in labels],
        )

    def _labels(self, tok: PatchTokenizer, request: Request, completing: bool) -> list[str | None]:
        """The class of each sample: --label; cycled over all classes when completing a prompt image without
        --label or --cond label=...; none otherwise (the old models sample their label token, the others
        sample unconditionally)."""
        names, label, n = tok.labels or request.condition_values.get("label", []), request.options.label, request.num_samples
        asked = request.asked().get("label")
        if label is not None:
            if not names:
                raise DataError("--label: this model was trained without class labels")
            if asked:
                raise DataError(f"--label {label} and --cond label={asked}: give the class once")
            try:
                return [pick_label(names, label)] * n
            except ValueError as e:
                raise DataError(f"--label: {e}") from None
        if names and completing and "label" not in request.asked():
            return [names[i % len(names)] for i in range(n)]
        return [None] * n

    def _prompt_pixels(self, tok: PatchTokenizer, path: Path | None, prompt_rows: int | None) -> tuple[np.ndarray, int] | None:
        """The prompt image's pixels and the number of patch rows kept, or None without --prompt."""
        if not path:
            if prompt_rows is not None:
                raise DataError("--prompt-rows needs --prompt IMAGE")
            return None
        try:
            pixels = tok.pixels(open_image(path))
        except ValueError as e:
            raise DataError(f"{path}: {e}") from None
        rows = tok.grid // 2 if prompt_rows is None else prompt_rows
        if not 0 <= rows <= tok.grid:
            raise DataError(f"--prompt-rows must be between 0 and {tok.grid} (patch rows of the image), got {rows}")
        return pixels, rows

    def fit_prompt(self, tokenizer: Tokenizer, prompt: list[int], limit: int) -> tuple[list[int], str]:
        """BOS, the label and the first whole patch rows that fit: generation goes on below them."""
        tokenizer = _patch_tokenizer(tokenizer)
        start = 2 if tokenizer.labels else 1
        rows = max(0, (limit - start) // tokenizer.grid)
        return prompt[: start + rows * tokenizer.grid], f"its first {rows} patch rows"

    def _constraint(self, tokenizer: PatchTokenizer) -> Constraint:
        """Label tokens right after BOS (when labelled), then exactly num_patches codes, then EOS."""
        tok = tokenizer
        allow = torch.zeros(3, tok.vocab_size, dtype=torch.bool)
        allow[0, tok.label_offset :] = True
        allow[1, tok.code_offset : tok.label_offset] = True
        allow[2, tok.eos_id] = True
        start = 2 if tok.labels else 1  # index of the first code in a row

        def allowed(rows: list[list[int]]) -> torch.Tensor:
            kind = [0 if len(r) < start else 1 if len(r) < start + tok.num_patches else 2 for r in rows]
            return allow[torch.tensor(kind)]

        return allowed

    @staticmethod
    def _sample_labels(tok: PatchTokenizer, samples: list[Sample]) -> list[str | None]:
        return [tok.decode_label(s.prompt + s.tokens) for s in samples] if tok.labels else [s.conditions.get("label") for s in samples]

    def show(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> str:
        tokenizer = _patch_tokenizer(tokenizer)
        samples = completed(tokenizer, samples, plan)
        out = []
        for i, (s, label) in enumerate(zip(samples, self._sample_labels(tokenizer, samples))):
            head = f"sample {i}" + (f" (label {label})" if label is not None else "")
            out.append(f"{head}, nll {s.nll:.3f}\n{ascii_art(tokenizer.decode_pixels(s.prompt + s.tokens))}\n\n")
        return "".join(out)

    def write(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> list[Path]:
        tokenizer = _patch_tokenizer(tokenizer)
        tok = tokenizer
        samples = completed(tok, samples, plan)  # --keep-rows: kept rows and repainted ones in order
        images = [tok.decode(s.prompt + s.tokens) for s in samples]
        labels = self._sample_labels(tok, samples)
        out = request.out_path()
        stems = request.out_stems(len(images), tuple(WRITTEN))
        folder = stems[0].parent == out  # else --out NAME.png: NAME.png, or NAME_000.png ... and NAME_grid.png
        if folder and out.exists() and not out.is_dir():
            raise DataError(f"{out}: --out must be a folder for images, or a file NAME.png (or .jpg, .webp, .gif, .bmp, .tif)")
        suffix = ".png" if folder else out.suffix  # as the user spelled it
        image_format = WRITTEN[suffix.lower()]
        files = OutputFiles(overwrite=request.overwrite, protect=[request.prompt])
        scale = max(1, math.ceil(64 / tok.size))  # 8×8 digits become 64×64 cells
        for stem, im, label in zip(stems, images, labels):
            named = stem.name + (f"_{_safe(label)}" if label is not None and (folder or len(stems) > 1) else "")
            files.add(stem.with_name(named + suffix), _saved(im, image_format))
        cols = math.ceil(math.sqrt(len(images)))
        beside = (lambda name: out / f"{name}{suffix}") if folder else (lambda name: out.with_name(f"{out.stem}_{name}{suffix}"))
        if folder or len(images) > 1:
            files.add(beside("grid"), _saved(tile(images, cols, scale), image_format))
        if plan.parsed is not None:
            files.add(beside("completion"), _saved(tile([tok.image(plan.parsed[0])] + images, len(images) + 1, scale), image_format))
        return files.commit()

    # ---- evaluation (arseq/modalities/image/evaluation.py) ---------------------------------------
    def evaluate(self, tokenizer: Tokenizer, report: EvalInputs) -> dict[str, Any]:
        tokenizer = _patch_tokenizer(tokenizer)
        return image_report(tokenizer, report)

    def metrics(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: TokenSeqs = ()) -> dict[str, float]:
        tokenizer = _patch_tokenizer(tokenizer)
        return sample_figures(tokenizer, sequences)

    def condition_values(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: Sequence[Example] = ()) -> list[dict[str, str]]:
        tokenizer = _patch_tokenizer(tokenizer)
        return classified_labels(tokenizer, sequences, reference)

    def plausible_mistake(self, tokenizer: Tokenizer, tokens: np.ndarray, position: int, rng: np.random.Generator) -> int | None:
        """A neighbouring pixel value: the code whose patch is nearest to this one's (greyscale 1-pixel codes: next level)."""
        tokenizer = _patch_tokenizer(tokenizer)
        code = int(tokens[position]) - tokenizer.code_offset
        if not 0 <= code < len(tokenizer.codebook) or len(tokenizer.codebook) < 2:
            return None
        dist = ((tokenizer.codebook.astype(np.int64) - tokenizer.codebook[code].astype(np.int64)) ** 2).sum(1)
        dist[code] = np.iinfo(np.int64).max
        return int(np.argmin(dist)) + tokenizer.code_offset
