"""The one thing pyproject.toml cannot say: the shipped configs live at the top of the tree (configs/, one folder
per modality) and travel inside the wheel as arseq/configs/, so `pip install arseq` users can name them
(`arseq train --config music/bach_chorales`). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["arseq*"]), "arseq.configs"], package_dir={"arseq.configs": "configs"})
