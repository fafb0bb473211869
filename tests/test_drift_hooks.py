"""Each modality's near miss (`plausible_mistake`) and error rule (`error_predicate`) for `arseq analyze drift`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arseq.modalities.image import ImageModality
from arseq.modalities.music import MusicModality
from arseq.modalities.protein import ProteinModality
from arseq.modalities.text import TextModality
from arseq.tokenizers.char import CharTokenizer
from arseq.tokenizers.patch import PatchTokenizer
from arseq.tokenizers.protein import ProteinTokenizer
from arseq.tokenizers.score import PITCH, Bar, Events, Note, ScoreTokenizer

RNG = np.random.default_rng(0)


def test_music_semitone_off_and_out_of_key():
    tok, music = ScoreTokenizer(), MusicModality()
    scale = [60, 62, 64, 65, 67, 69, 71, 72] * 2  # C major, two bars of 4/4 quarters
    notes = [Note(0, i * tok.ppq, p, tok.ppq) for i, p in enumerate(scale)]
    ev = Events([Bar(0, 4 * tok.ppq, (4, 4), 0), Bar(4 * tok.ppq, 4 * tok.ppq, (4, 4), 0)], notes, 1)
    ids = np.array(tok.encode_events(ev))
    pitches = np.flatnonzero(tok.types[ids] == PITCH)
    for pos in pitches[:5]:
        wrong = music.plausible_mistake(tok, ids, int(pos), RNG)
        assert tok.types[wrong] == PITCH and abs(int(tok.values[wrong]) - int(tok.values[ids[pos]])) == 1
    assert music.plausible_mistake(tok, ids, int(np.flatnonzero(tok.types[ids] != PITCH)[1]), RNG) is None
    predicate = music.error_predicate(tok, [])
    assert not predicate(ids.tolist()).any()
    sharp = ids.copy()
    sharp[pitches[3]] = tok.start[PITCH] + 66  # F# in C major
    flags = predicate(sharp.tolist())
    assert flags.tolist() == [i == pitches[3] for i in range(len(ids))]


def test_image_neighbouring_value():
    tok = PatchTokenizer([[0], [100], [110], [255]], size=2, patch_size=1, mode="L")
    ids = np.array(tok.encode(np.array([[0, 100], [110, 255]], dtype=np.uint8)))
    image = ImageModality(size=2)
    at = {int(c - tok.code_offset): i for i, c in enumerate(ids) if tok.code_offset <= c < tok.label_offset}
    assert image.plausible_mistake(tok, ids, at[1], RNG) == tok.code_offset + 2  # 100 -> 110
    assert image.plausible_mistake(tok, ids, at[3], RNG) == tok.code_offset + 2  # 255 -> 110
    assert image.plausible_mistake(tok, ids, 0, RNG) is None  # BOS


def test_protein_substitution_and_nonstandard_residue():
    tok, protein = ProteinTokenizer(), ProteinModality()
    ids = np.array([tok.bos_id, *tok.encode("MKLW"), tok.eos_id])
    seen = {tok.decode([protein.plausible_mistake(tok, ids, 3, np.random.default_rng(s))]) for s in range(40)}
    assert seen and seen <= set("IMVF")  # L's BLOSUM62-positive substitutes
    assert protein.plausible_mistake(tok, ids, 0, RNG) is None
    flags = protein.error_predicate(tok, [])([tok.bos_id, *tok.encode("MXKB"), tok.eos_id])
    assert flags.tolist() == [False, False, True, False, True, False]


def test_text_typo_and_unknown_words():
    tok, text = CharTokenizer.fit(["the cat sat on a mat. qwerty"]), TextModality()
    ids = np.array([tok.bos_id, *tok.encode("cat sat")])
    wrong = tok.decode([text.plausible_mistake(tok, ids, 2, RNG)])  # 'a': its neighbours q w s z
    assert wrong in "qwsz" and wrong != "a"
    assert text.plausible_mistake(tok, ids, 4, RNG) is None  # the space: no typo for it
    predicate = text.error_predicate(tok, [np.array(tok.encode("the cat sat on a mat."))])
    sample = tok.encode("the cat tac on a ma")
    flags = predicate(sample)
    assert np.flatnonzero(flags).tolist() == [10]  # 'tac' is no word, marked on its last letter; 'ma' is still open


def test_dna_transition(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "examples" / "arseq-dna"))
    from arseq_dna.modality import DnaModality
    from arseq_dna.tokenizer import NucleotideTokenizer

    tok = NucleotideTokenizer("dna", k=1)
    ids = np.array([tok.bos_id, *tok.encode("ACGTN")])
    dna = DnaModality()
    assert [tok.decode([dna.plausible_mistake(tok, ids, i, RNG)]) for i in range(1, 5)] == ["G", "T", "A", "C"]
    assert dna.plausible_mistake(tok, ids, 5, RNG) is None  # N
