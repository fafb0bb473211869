"""The built-in `image` modality: patch-codebook tokens in raster order (`modality.py`).

Beside it: image files and the bundled digits (`files`), reading them into pixels and labels (`reading`),
fitting the codebook (`codebook`), repainting rows (`infill`), count baselines and PSNR (`metrics`), and
grids and terminal previews (`render`).
"""

from arseq.modalities.image.modality import ImageGenerate, ImageModality

__all__ = ["ImageGenerate", "ImageModality"]
