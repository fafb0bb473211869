"""Plain text: character-level (nanoGPT) or byte-level BPE tokens; one item per file.

Files are UTF-8, or UTF-16/32 where a byte-order mark says so. By default a file that is not is skipped with
the byte offset of the first bad byte; `errors: replace` decodes it anyway, replacing invalid bytes with U+FFFD.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np

from arseq.atomic import atomic_write
from arseq.modalities.base import (
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
from arseq.modalities.infill_ranges import check_fim
from arseq.modalities.text.infill import TextInfill, split_gap
from arseq.modalities.text.near_miss import typo, unknown_words, vocabulary
from arseq.tokenizers.base import Tokenizer
from arseq.tokenizers.bpe import BPETokenizer
from arseq.tokenizers.char import CharTokenizer

# A byte-order mark names the file's encoding (Windows editors save "Unicode" text as UTF-16 with one, and some
# prepend one to UTF-8); without one a file is UTF-8. UTF-32's marks first: UTF-32-LE's begins with UTF-16-LE's.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)

ONE_FILE = (".txt", ".md")  # an --out ending in one holds every sample; any other is a folder of .txt files


@dataclass
class TextGenerate:
    """text options

    Args:
        gap: with --prompt: the marker in it (e.g. '[...]') where the model writes the text joining what comes
            before and after it (fill in the middle; needs a model trained with data.fim_rate > 0)
    """

    gap: str | None = None


class TextModality(Modality):
    name = "text"
    tokenizer_kinds = {"char": CharTokenizer, "bpe": BPETokenizer}
    suffixes = (".txt", ".md", ".text")
    reads_files_independently = True  # prepare reads the files in data.workers processes
    reading_version = "bom-1"  # files with a byte-order mark are read in its encoding (they were skipped, or kept U+FEFF)

    def __init__(self, tokenizer: Literal["char", "bpe"] = "char", vocab_size: int = 2048, errors: Literal["strict", "replace"] = "strict"):
        """
        Args:
            tokenizer: `char` (one token per character) or `bpe` (byte-level BPE, lossless on any text).
            vocab_size: BPE vocabulary size, special tokens included.
            errors: what to do with bytes that are not UTF-8: `strict` skips the file, `replace` keeps it.
        """
        self.tokenizer_kind, self.vocab_size, self.errors = tokenizer, vocab_size, errors

    def _texts(self, files: list[Path]) -> Iterator[tuple[Path, str | Skipped]]:
        for f in files:
            try:
                raw = f.read_bytes()
            except OSError as e:
                yield f, Skipped(str(f), f"cannot read: {e.strerror}")
                continue
            encoding = next((name for bom, name in BOMS if raw.startswith(bom)), "utf-8")
            try:
                text = raw.decode(encoding, errors=self.errors)
            except UnicodeDecodeError as e:
                label = "UTF-8" if encoding == "utf-8" else f"{encoding.upper()} as its byte-order mark says"
                yield f, Skipped(str(f), f"not {label} (bad byte at offset {e.start}); set modality.errors: replace to keep it")
                continue
            yield f, (text if text else Skipped(str(f), "empty file"))

    def build_tokenizer(self, files: list[Path], source: str | None) -> Tokenizer:
        if source is not None:
            raise DataError(f"text modality has no built-in source {source!r}; use data.paths")
        texts = (t for _, t in self._texts(files) if isinstance(t, str))
        if self.tokenizer_kind == "char":
            return CharTokenizer.fit(texts)
        return BPETokenizer.fit(texts, vocab_size=self.vocab_size)

    def read(self, files: list[Path], source: str | None, tokenizer: Tokenizer, check_roundtrip: bool = False) -> Iterator[Example | Skipped]:
        for f, text in self._texts(files):
            if isinstance(text, Skipped):
                yield text
                continue
            try:
                ids = tokenizer.encode_array(text) if isinstance(tokenizer, CharTokenizer) else np.asarray(tokenizer.encode(text))
            except ValueError as e:
                yield Skipped(str(f), str(e))
                continue
            exact = tokenizer.decode(list(ids)) == text if check_roundtrip else None
            tokens = np.concatenate([[tokenizer.bos_id], ids, [tokenizer.eos_id]])
            yield Example(tokens, str(f), exact, {"chars": len(text)})

    def summarize(self, tokenizer: Tokenizer, examples: list[Example]) -> dict[str, Any]:
        chars = sum(e.info.get("chars", 0) for e in examples)
        return {"chars": int(chars), "chars_per_token": chars / max(1, sum(len(e.tokens) - 2 for e in examples))}

    def demo_config(self, tmp_dir: Path) -> dict[str, Any]:
        """Ten short files of simple sentences: enough items for a train/validation split."""
        words = ["the cat sat on the mat.", "a dog ran to the park.", "we like to read books.", "birds sing at dawn."]
        for i in range(10):
            atomic_write(tmp_dir / "text" / f"doc_{i}.txt", " ".join(words[(i + j) % 4] for j in range(12)) + "\n")
        return {"data": {"paths": str(tmp_dir / "text")}}

    # ---- generation ------------------------------------------------------------------------------
    generate_options = TextGenerate

    def plan(self, tokenizer: Tokenizer, request: Request) -> Plan:
        """--prompt is text to continue (with --gap: to fill in); one sample printed to the terminal streams as it is sampled."""
        gap = getattr(request.options, "gap", None)
        if gap is not None:
            fim = check_fim(request.fim, "--gap")  # (split_gap's first check)
            infill = split_gap(request.prompt, gap, fim)
            prompt = infill.prompt(tokenizer, fim, request.context)
            return Plan([list(prompt) for _ in range(request.num_samples)], parsed=infill)
        try:
            ids = tokenizer.encode(request.prompt or "")
        except ValueError as e:
            raise DataError(f"--prompt: {e}") from None
        stream = request.out is None and request.num_samples == 1
        return Plan(
            [[tokenizer.bos_id, *ids] for _ in range(request.num_samples)], streamer=self._streamer(tokenizer, request.prompt) if stream else None
        )

    def _streamer(self, tokenizer: Tokenizer, prompt: str | None) -> Callable[[int, int], str]:
        printed, ids, started = [""], [], [False]

        def emit(row: int, token: int) -> str:
            head = ""
            if not started[0]:  # the prompt goes out with the first token: making a plan shows nothing
                head, started[0] = prompt or "", True
            if token == tokenizer.eos_id:
                return head
            ids.append(token)
            text = tokenizer.decode(ids)  # decode the whole tail: BPE merges can change earlier bytes
            if text.endswith("\ufffd"):
                return head
            new, printed[0] = text[len(printed[0]) :], text
            return head + new

        return emit

    def _sample_texts(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> list[str]:
        infill = plan.parsed if isinstance(plan.parsed, TextInfill) else None
        return [infill.text(tokenizer.decode(s.tokens)) if infill else (request.prompt or "") + tokenizer.decode(s.tokens) for s in samples]

    def show(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> str:
        return _headed(self._sample_texts(tokenizer, samples, request, plan))

    def output_files(self, tokenizer: Tokenizer, request: Request) -> list[Path]:
        """`--out NAME.txt` (or .md): every sample in it; else one .txt per sample."""
        out = request.out_path()
        return [out] if out.suffix in ONE_FILE else [stem.with_suffix(".txt") for stem in request.out_stems(request.num_samples, ())]

    def write(self, tokenizer: Tokenizer, samples: list[Sample], request: Request, plan: Plan) -> list[Path]:
        texts, paths = self._sample_texts(tokenizer, samples, request, plan), self.output_files(tokenizer, request)
        files = OutputFiles(overwrite=request.overwrite)
        if request.out_path().suffix in ONE_FILE:  # several samples: headed as on stdout (a blank line is no boundary in text)
            files.add(paths[0], texts[0] + "\n" if len(texts) == 1 else _headed(texts))
        else:
            for path, t in zip(paths, texts):
                files.add(path, t)
        return files.commit()

    # ---- evaluation ------------------------------------------------------------------------------
    def metrics(self, tokenizer: Tokenizer, sequences: list[list[int]], reference: TokenSeqs = ()) -> dict[str, float]:
        texts = [tokenizer.decode(s) for s in sequences]
        words = [w for t in texts for w in t.split()]
        bigrams = list(zip(words, words[1:]))
        return {
            "chars_per_sequence": float(np.mean([len(t) for t in texts])) if texts else 0.0,
            "mean_word_length": float(np.mean([len(w) for w in words])) if words else 0.0,
            "distinct_bigrams": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        }

    def evaluate(self, tokenizer: Tokenizer, report: EvalInputs) -> dict[str, Any]:
        chars = sum(len(tokenizer.decode(list(item))) for item in report.val)
        return {
            "bits_per_char": report.total_nll / math.log(2) / max(1, chars),
        }

    # ---- error analysis --------------------------------------------------------------------------
    def plausible_mistake(self, tokenizer: Tokenizer, tokens: np.ndarray, position: int, rng: np.random.Generator) -> int | None:
        """A typo: one letter of the token replaced by a neighbouring key."""
        special = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}
        return None if int(tokens[position]) in special else typo(tokenizer, int(tokens[position]), rng)

    def error_predicate(self, tokenizer: Tokenizer, reference: list[np.ndarray]) -> Callable[[Any], np.ndarray]:
        """A word that never occurs in the training text is an error (marked on the token that ends it)."""
        special = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id}
        known = vocabulary([tokenizer.decode(list(r)) for r in reference])
        return unknown_words(lambda t: " " if t in special else tokenizer.decode([t]), known)


def _headed(texts: list[str]) -> str:
    """Samples one after another, each under `----- sample i -----` (stdout, and one .txt holding several)."""
    return "".join(f"----- sample {i} -----\n{t}\n" for i, t in enumerate(texts))
