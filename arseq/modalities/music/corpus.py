"""Pieces from music21's own corpus (installed with music21, no network): the Bach chorales, and the works
of several other composers, one corpus folder a composer (the folder name is the composer's label)."""

from __future__ import annotations

from pathlib import Path

from arseq.errors import DataError

# Corpus folders holding one composer's works, J. S. Bach left out (he has the chorales). Folk-song
# collections (essenFolksong, oneills1850, ryansMammoth, ...), demos and exercises are not composers.
COMPOSERS = (
    "beach",
    "beethoven",
    "chopin",
    "ciconia",
    "corelli",
    "cpebach",
    "handel",
    "haydn",
    "johnson_j_r",
    "joplin",
    "josquin",
    "liliuokalani",
    "luca",
    "lusitano",
    "monteverdi",
    "mozart",
    "palestrina",
    "schoenberg",
    "schubert",
    "schumann_clara",
    "schumann_robert",
    "trecento",
    "verdi",
    "weber",
    "webern",
)
# Preferred format where a work is stored twice (beethoven/opus18no1 has movement1.krn and .mxl).
FORMAT_ORDER = {".mxl": 0, ".musicxml": 1, ".xml": 1, ".krn": 2, ".abc": 3, ".mid": 4, ".midi": 4}


def bach_chorales() -> list[tuple[str, str]]:
    """(name, path) of the 350 distinct chorales of music21's `corpus.chorales.Iterator`.

    A name can match several corpus files (bwv281 has a .krn and an .mxl; bwv245.3 also matches
    bwv245.37); take the file whose stem is the name exactly, preferring MusicXML.
    """
    from music21 import corpus

    order = {".mxl": 0, ".xml": 1, ".musicxml": 1, ".krn": 2}
    out = []
    for name in dict.fromkeys(corpus.chorales.Iterator(returnType="filename")):
        found = corpus.getWork(name)
        found = found if isinstance(found, list) else [found]
        stem = name.rsplit("/", 1)[-1]
        exact = [p for p in found if p.name[: -len(p.suffix)] == stem and p.suffix in order] or found
        out.append((name, str(min(exact, key=lambda p: order.get(p.suffix, 9)))))
    return out


def corpus_root() -> Path:
    import music21

    return Path(music21.__file__).parent / "corpus"


def music21_composers(composers: tuple[str, ...] = COMPOSERS, per_composer: int | None = None) -> list[tuple[str, str]]:
    """(name, path) of the works of `composers` in music21's corpus, in sorted order: name is
    "composer/path/in/folder" (without suffix), so the composer is the name's first part.

    One file a work (the preferred format where there are several); with `per_composer`, each
    composer's first that many works, a fixed and reproducible sample.
    """
    root = corpus_root()
    out = []
    for composer in composers:
        folder = root / composer
        if not folder.is_dir():
            raise DataError(f"music21's corpus has no folder {composer!r} ({root}); is music21 fully installed?")
        works: dict[str, Path] = {}
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in FORMAT_ORDER and p.is_file()):
            name = path.relative_to(root).with_suffix("").as_posix()
            if name not in works or FORMAT_ORDER[path.suffix.lower()] < FORMAT_ORDER[works[name].suffix.lower()]:
                works[name] = path
        out += [(name, str(works[name])) for name in sorted(works)][:per_composer]
    return out
