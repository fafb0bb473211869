"""Every `arseq VERB --flag` the README, the docs and the configs' comments show is a flag that verb takes: docs
drift when a flag is renamed or removed, and a reader's first copy-paste is where it shows."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from arseq.cli import main
from arseq.modalities import loadable

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "configs").rglob("*.yaml"))]
# `arseq VERB` and what follows on its line, up to the end of inline code, a table cell or a comment
COMMAND = re.compile(r"\barseq (train|prepare|generate|evaluate|export|score|analyze drift|revise|serve|modalities)\b([^`|#&;\n]*)")
FLAG = re.compile(r"(?<![\w-])--([A-Za-z][\w.-]*)")
PLACEHOLDERS = {"section.key"}  # the README's `--section.key VALUE`: any config key


def shown() -> list[tuple[str, str, str]]:
    """(page, verb, flag) for every flag of every arseq command on the pages."""
    out = []
    for page in PAGES:
        for line in page.read_text(encoding="utf-8").splitlines():
            for verb, rest in COMMAND.findall(line):
                out += [(page.relative_to(ROOT).as_posix(), verb, flag) for flag in FLAG.findall(rest) if flag not in PLACEHOLDERS]
    return out


def helped(argv: list[str], capsys) -> set[str]:
    """The flags `arseq ARGV --help` lists, with underscores."""
    try:
        main([*argv, "--help"])
    except SystemExit:  # jsonargparse's --help exits; the verbs that print their own return
        pass
    return {f.replace("-", "_") for f in FLAG.findall(capsys.readouterr().out)}


def known(verb: str, capsys) -> set[str]:
    """The flags `arseq VERB --help` lists; a config verb's with each modality's section, a sampling verb's with
    each modality's options."""
    flags = helped(verb.split(), capsys)
    if verb in ("train", "prepare"):
        for entry, _ in loadable():
            flags |= helped([verb, "--modality.name", entry.name], capsys)
    if verb in ("generate", "evaluate", "analyze drift"):
        for _, modality in loadable():
            options = modality.generate_options
            flags |= {f.name for f in dataclasses.fields(options)} if options else set()
    return flags | {"help"}


def test_every_flag_the_docs_show_is_one_the_verb_takes(capsys):
    commands = shown()
    assert len(commands) > 100 and {verb for _, verb, _ in commands} >= {"train", "generate", "evaluate", "serve", "score"}
    flags = {verb: known(verb, capsys) for verb in {verb for _, verb, _ in commands}}
    unknown = sorted(
        {f"{page}: arseq {verb} --{flag}" for page, verb, flag in commands if flag.replace("-", "_").removeprefix("no_") not in flags[verb]}
    )
    assert not unknown, "\n".join(unknown)
