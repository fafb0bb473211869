import numpy as np
import pytest

from arseq.data.config import DataConfig
from arseq.data.prepare import prepare
from arseq.modalities import Skipped
from arseq.modalities.text import TextModality
from arseq.tokenizers.bpe import BPETokenizer
from arseq.tokenizers.char import CharTokenizer

TEXT = "Héllo, wörld! 👋\nTo be, or not to be:\tthat is the question.\n"


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.fit([TEXT])
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT and min(ids) >= 3 and max(ids) < tok.vocab_size
    assert CharTokenizer.from_dict(tok.to_dict()).encode(TEXT) == ids
    with pytest.raises(ValueError, match="'Z'"):
        tok.encode("Z")


def test_bpe_tokenizer_is_lossless_and_sized_as_asked():
    corpus = [TEXT * 20, "the theme of the thesis " * 50]
    tok = BPETokenizer.fit(corpus, vocab_size=300)
    assert tok.vocab_size <= 300 and (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    for text in (TEXT, "unseen ∑ symbols ✓ and   spaces"):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("the theme of the thesis")) < len("the theme of the thesis")
    assert BPETokenizer.from_dict(tok.to_dict()).encode(TEXT) == tok.encode(TEXT)


def test_text_read_skips_bad_files_with_reasons(tmp_path):
    good, latin1, empty = tmp_path / "good.txt", tmp_path / "latin1.txt", tmp_path / "empty.txt"
    good.write_text("hello there", encoding="utf-8")
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    empty.write_text("")
    modality = TextModality()
    tok = modality.build_tokenizer([good, latin1, empty], None)
    records = list(modality.read([good, latin1, empty], None, tok))
    skipped = {r.file: r.reason for r in records if isinstance(r, Skipped)}
    assert "bad byte at offset 3" in skipped[str(latin1)] and skipped[str(empty)] == "empty file"
    replaced = list(TextModality(errors="replace").read([latin1], None, CharTokenizer.fit(["caf\ufffd au lait"])))
    assert not isinstance(replaced[0], Skipped)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_a_byte_order_mark_names_the_encoding(tmp_path, encoding):
    bom = {"utf-16-be": b"\xfe\xff"}.get(encoding, b"")  # Python writes utf-16-be without a mark
    (tmp_path / "marked.txt").write_bytes(bom + TEXT.encode(encoding))
    modality = TextModality()
    tok = modality.build_tokenizer([tmp_path / "marked.txt"], None)
    [example] = modality.read([tmp_path / "marked.txt"], None, tok)
    assert tok.decode(list(example.tokens[1:-1])) == TEXT  # no U+FEFF, no bytes read as UTF-8
    (tmp_path / "cut.txt").write_bytes(b"\xff\xfe" + "ab".encode("utf-16-le") + b"\x00")  # an odd byte at the end
    [skipped] = modality.read([tmp_path / "cut.txt"], None, tok)
    assert isinstance(skipped, Skipped) and skipped.reason.startswith("not UTF-16 as its byte-order mark says (bad byte at offset")


def test_prepare_caches_and_splits(tmp_path):
    files = []
    for i in range(20):
        f = tmp_path / f"doc{i:02d}.txt"
        f.write_text(f"document number {i} " * 5, encoding="utf-8")
        files.append(str(f))
    modality = TextModality()
    data = DataConfig(paths=str(tmp_path), val_fraction=0.2, seed=1)
    first = prepare(modality, {}, data, check_roundtrip=True, progress=False)
    assert (first.stats["train_items"], first.stats["val_items"], first.stats["split"]) == (16, 4, "items")
    assert first.stats["roundtrip_exact"] == 1.0 and not first.cached
    again = prepare(modality, {}, data, check_roundtrip=True, progress=False)
    assert again.cached and again.seconds == 0 and np.array_equal(again.train.tokens, first.train.tokens)
    assert prepare(modality, {}, DataConfig(paths=str(tmp_path), val_fraction=0.2, seed=2), progress=False).stats["val_items"] == 4
    (tmp_path / "doc00.txt").write_text("changed", encoding="utf-8")
    assert not prepare(modality, {}, data, progress=False).cached


def test_single_file_holds_out_the_tail(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("abcdefghij" * 100, encoding="utf-8")
    prepared = prepare(TextModality(), {}, DataConfig(paths=str(f), val_fraction=0.1), progress=False)
    assert prepared.stats["split"] == "tail"
    assert prepared.val.num_tokens == 1002 - int(1002 * 0.9)
    tok = prepared.tokenizer
    assert tok.decode(np.concatenate([prepared.train.tokens, prepared.val.tokens])) == "abcdefghij" * 100
