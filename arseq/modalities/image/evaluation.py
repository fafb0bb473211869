"""What `evaluate` reports for images: the model's bits/dim against count baselines, figures of a set of
samples, and each sample's class read back by a classifier fitted on the training images."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Sequence

import numpy as np

from arseq.modalities import EvalInputs, Example, TokenSeqs
from arseq.modalities.image.metrics import baseline_bits
from arseq.tokenizers.patch import PatchTokenizer

LN2 = math.log(2)
MAX_CLASSIFIER_IMAGES = 5000  # classified_labels fits its classifier on at most this many training images


def complete_codes(tok: PatchTokenizer, items: TokenSeqs) -> np.ndarray:
    """(items, num_patches) code indices of the complete images among token sequences."""
    rows = []
    for item in items:
        ids = np.asarray(item, dtype=np.int64)
        codes = ids[tok.is_code(ids)] - tok.code_offset
        if len(codes) >= tok.num_patches:
            rows.append(codes[: tok.num_patches])
    return np.array(rows, dtype=np.int64).reshape(len(rows), tok.num_patches)


def image_report(tokenizer: PatchTokenizer, report: EvalInputs) -> dict[str, Any]:
    """bits/dim of the model and of three count baselines fitted on the training split, same val items.

    The model's bits/dim counts every predicted token of an item (label and EOS too), so it bounds
    -log2 p(image) from above; the baselines model the codes alone.
    """
    tok = tokenizer
    dims = tok.dims_per_image
    train, val = complete_codes(tok, report.train), complete_codes(tok, report.val)
    result: dict[str, Any] = {
        "bits_per_dim": float(report.item_nll.sum() / LN2 / (len(report.val) * dims)) if len(report.val) else None,
        "dims_per_image": dims,
        "lossless": tok.lossless,
    }
    if len(train) and len(val):
        result["baselines"] = {name: float(bits / dims) for name, bits in baseline_bits(train, val, len(tok.codebook)).items()}
    result["tokenizer"] = {"codebook_size": len(tok.codebook), **tok.fit_stats}
    return result


def sample_figures(tokenizer: PatchTokenizer, sequences: list[list[int]]) -> dict[str, float]:
    """Figures of a set of samples (or of the data, for comparison): complete images, intensity, edges,
    variety, the share of each class."""
    tok = tokenizer
    codes = complete_codes(tok, sequences)
    out: dict[str, float] = {"complete_fraction": len(codes) / max(len(sequences), 1)}
    if len(codes):
        pixels = tok.codebook[codes].astype(np.float64) / 255  # (n, patches, patch_dim)
        imgs = np.stack([tok.decode_pixels(c + tok.code_offset) for c in codes]).astype(np.float64) / 255
        luma = imgs.mean(axis=3)
        out.update(
            {
                "mean_intensity": float(pixels.mean()),
                "foreground_fraction": float((luma > 0.5).mean()),
                "edge_strength": float(np.abs(np.diff(luma, axis=2)).mean() + np.abs(np.diff(luma, axis=1)).mean()) / 2,
                "distinct_fraction": len({c.tobytes() for c in codes}) / len(codes),
            }
        )
    counts = Counter(tok.decode_label(s) for s in sequences)
    for name in tok.labels:  # every class, in order, so data and samples share the keys
        out[f"label_{name}"] = counts[name] / max(len(sequences), 1)
    return out


def classified_labels(tokenizer: PatchTokenizer, sequences: list[list[int]], reference: Sequence[Example] = ()) -> list[dict[str, str]]:
    """The class of each image by a logistic regression fitted on the labelled reference images (scikit-learn;
    pixels scaled to 0..1): how `evaluate --cond label=...` checks that samples show the class asked for."""
    tok = tokenizer
    train = [(complete_codes(tok, [e.tokens]), e.conditions["label"]) for e in reference if "label" in e.conditions]
    train = [(codes, label) for codes, label in train if len(codes)][:MAX_CLASSIFIER_IMAGES]  # complete images only
    if len({label for _, label in train}) < 2:
        return [{} for _ in sequences]
    from sklearn.linear_model import LogisticRegression

    def features(codes: np.ndarray) -> np.ndarray:
        return tok.codebook[codes].reshape(len(codes), -1).astype(np.float32) / 255

    classifier = LogisticRegression(max_iter=2000).fit(features(np.concatenate([c for c, _ in train])), [label for _, label in train])
    per = [complete_codes(tok, [s]) for s in sequences]  # (1 or 0, num_patches): complete image or not
    codes = np.concatenate(per) if per else np.zeros((0, tok.num_patches), dtype=np.int64)
    guesses = iter(classifier.predict(features(codes)).tolist() if len(codes) else [])  # one batched prediction
    return [{"label": str(next(guesses))} if len(c) else {} for c in per]
