"""The PNG plots of `arseq analyze drift` (matplotlib, Agg backend: no display needed).

Each function returns a writer for `OutputFiles.add`, so plots are written atomically with the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

COLORS = {"random": "tab:blue", "likeliest_wrong": "tab:red", "plausible": "tab:green"}


def _figure(width: float = 6.4, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=100)


def curves_plot(kinds: dict[str, Any], key: str, ylabel: str, title: str) -> Callable[[Path], None]:
    """Mean `key` curve per error kind against the offset after the error, with its bootstrap band."""

    def write(path: Path) -> None:
        plt, fig = _figure()
        ax = fig.add_subplot(1, 1, 1)
        for kind, r in kinds.items():
            c = r[key]
            x = range(1, len(c["mean"]) + 1)
            ax.plot(x, c["mean"], label=f"{kind} ({r['sites']} sites)", color=COLORS.get(kind))
            ax.fill_between(x, c["lo"], c["hi"], alpha=0.25, color=COLORS.get(kind))
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("offset after the injected error (tokens)")
        ax.set_ylabel(ylabel)
        _save(plt, fig, ax, title, path)

    return write


def _save(plt: Any, fig: Any, ax: Any, title: str, path: Path) -> None:
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def survival_plot(s: dict[str, Any], title: str) -> Callable[[Path], None]:
    """Measured S(n) against (1 - e)^n, both with bootstrap bands."""

    def write(path: Path) -> None:
        plt, fig = _figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(s["n"], s["survival"], color="tab:blue", label="measured S(n)")
        ax.fill_between(s["n"], s["survival_lo"], s["survival_hi"], alpha=0.25, color="tab:blue")
        ax.plot(s["n"], s["independent"], color="tab:red", ls="--", label=f"(1 - e)^n, e = {s['error_rate']:.4f}")
        ax.fill_between(s["n"], s["independent_lo"], s["independent_hi"], alpha=0.2, color="tab:red")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("generated tokens n")
        ax.set_ylabel("P(no error in the first n)")
        _save(plt, fig, ax, title, path)

    return write
