"""REMI-style score tokenizer on music21: a bar-by-bar, part-by-part stream of note events.

Layout of one piece::

    <bos> Bar TS_3/4 Key_1 [Tempo_i] [Len_x]  Part_0 Pitch Dur Pitch Dur ...  Part_1 Pos_6 Pitch Dur ...
          Bar Part_0 Pitch Dur ...                                                               <eos>

Why it is short (about 2.4 tokens per note on the Bach chorales, against ~4.4 for MidiTok's REMI):
within a bar the notes are grouped by part, and each part keeps a *cursor* at the end of its previous
note, so a note that starts where the previous one ended (nearly every note of a voice) needs no
Position token; `Part` appears only when the part changes, and TS/Key/Tempo only when they change.
Times are integers on a grid of `ppq` steps per quarter note (24: 32nd notes and eighth- and
sixteenth-note triplets land exactly, which covers every note of the Bach chorales). A note held across
bar lines is one note with a long duration (ties are merged); one longer than the longest Dur token is
`Dur_max ... Dur_rest`. A grace note is `Grace_<value> Pitch` (its notated value and slash, no Dur): it
takes no time, comes before the ordinary notes of its onset, and is written back as a music21 grace note.
Tokenizers saved before grace tokens existed load with `grace=False`: their ids, all still the same, end
where the Grace ids (the last ones) would begin.

One state machine (`Grammar`) defines which sequences are well-formed; it drives both `decode`
(which repairs or skips bad tokens, so any sequence decodes, and counts what it fixed) and the
sampling constraint (which only allows tokens that keep the sequence well-formed). For a
well-formed sequence `encode(decode(ids)) == ids`.

The package, one concern a module:

- `vocab`: token types and the id layout (`ScoreVocab`), token-level transforms;
- `events`: a piece as plain data (`Events`, `Bar`, `Note`), independent of music21;
- `grammar`: the well-formedness state machine (ids -> events);
- `reading`: music21 score -> events;  `writing`: events -> music21 score;
- `tokenizer`: `ScoreTokenizer`, which ties them together (events -> ids, and the tokenizer protocol).

music21 is imported inside the functions that need it, so importing this package stays cheap.
"""

from arseq.tokenizers.score.events import Bar, Events, Note
from arseq.tokenizers.score.grammar import Grammar
from arseq.tokenizers.score.tokenizer import ScoreTokenizer
from arseq.tokenizers.score.vocab import DUR, KEY, PART, PITCH, TS
from arseq.tokenizers.score.writing import VOICE_NAMES

__all__ = ["DUR", "KEY", "PART", "PITCH", "TS", "VOICE_NAMES", "Bar", "Events", "Grammar", "Note", "ScoreTokenizer"]
