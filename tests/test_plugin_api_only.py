"""The built-in modalities and the DNA example are written against the plugin API alone, as a plugin author's
would be: `arseq.modalities` (which re-exports `arseq.modalities.base`), `arseq.tokenizers`, and the leaves
(errors, atomic writes, limits on hostile input, worker processes); never the core's private modules (data, decode, conditioning,
artifacts, app...). A built-in is a package under `arseq/modalities/`: it may import its own modules and the
shared helpers beside the API (`infill_ranges`), never another built-in's package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = ("arseq.modalities", "arseq.tokenizers", "arseq.errors", "arseq.atomic", "arseq.limits", "arseq.parallel")
MODALITIES = ROOT / "arseq" / "modalities"
API = {"__init__.py", "base.py", "plan.py"}  # the plugin API itself (and the registry)
PACKAGES = sorted(p.name for p in MODALITIES.iterdir() if (p / "__init__.py").is_file())
SHARED = sorted(p for p in MODALITIES.glob("*.py") if p.name not in API)
BUILTINS = SHARED + sorted(MODALITIES.glob("*/*.py"))
DNA = sorted((ROOT / "examples" / "arseq-dna" / "arseq_dna").glob("*.py"))


def arseq_imports(path: Path) -> list[str]:
    """Every `arseq...` module a file imports, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "arseq" else [f"arseq.{a.name}" for a in node.names]
            found += [n for n in names if n == "arseq" or n.startswith("arseq.")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("arseq.")]
    return found


@pytest.mark.parametrize("path", BUILTINS + DNA, ids=lambda p: p.name)
def test_a_modality_imports_only_the_plugin_api(path):
    private = [m for m in arseq_imports(path) if not any(m == p or m.startswith(p + ".") for p in PUBLIC)]
    assert not private, f"{path.relative_to(ROOT)} imports core modules a plugin cannot rely on: {private}"


@pytest.mark.parametrize("path", BUILTINS, ids=lambda p: str(p.relative_to(MODALITIES)))
def test_a_built_in_never_imports_another_built_in(path):
    own = path.parent.name if path.parent != MODALITIES else None
    others = [f"arseq.modalities.{p}" for p in PACKAGES if p != own]
    crossing = [m for m in arseq_imports(path) if any(m == o or m.startswith(o + ".") for o in others)]
    assert not crossing, f"{path.relative_to(ROOT)} imports another built-in modality: {crossing}"


def test_the_check_sees_private_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from arseq.decode.config import SamplingConfig\n\ndef f():\n    from arseq import conditioning\n")
    assert arseq_imports(bad) == ["arseq.decode.config", "arseq.conditioning"]
    assert set(PACKAGES) == {"image", "music", "protein", "text"} and len(BUILTINS) > len(PACKAGES) and DNA
