"""Row validation: every rejection is a stable short code (`REASONS`) plus a human detail.

Metadata checks (`check_fields`, `check_text`) run before any audio is read; `check_audio` runs on decoded
samples in the shard workers. Fixable problems are fixed and counted, never silently: another sample rate is
resampled (`resampled`), more than one channel is downmixed (`downmixed`), a missing language is detected
from the script (`language_detected`).
"""

from __future__ import annotations

import math
import os
import re
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indextts_ray.data.manifest import OPTIONAL, PRECOMPUTED_USED, REQUIRED, RawRow, Rejection, resolve_path
from indextts_ray.text import KNOWN_LANGUAGES, canonical_language

REASONS: dict[str, str] = {
    # line level
    "bad_utf8": "the line is not valid UTF-8",
    "not_json": "the line is not a JSON object",
    "bad_list_line": "the MeloTTS line does not have 4 or 5 '|'-separated fields",
    # fields
    "missing_field": "a required field is missing or empty",
    "bad_field": "a field has the wrong type",
    "duplicate_id": "the id was already used by an earlier row (the first one is kept)",
    "bad_duration": "duration is not a finite, non-negative number",
    "unknown_emotion": "emotion is not one of model.emotion_labels",
    "path_outside_root": "an audio/codes path escapes the dataset root (lexically, or through a symlink)",
    "bad_id": "the id cannot be a file name: a path separator, control character, leading dot or over 255 bytes",
    "unknown_language": "language is not one the text front end knows, or not in data.languages",
    # text
    "empty_text": "text is empty",
    "control_chars": "text contains control characters",
    "no_speakable_text": "text has no letters or digits (punctuation only) after normalisation",
    "text_too_long": "more text tokens than max_text_tokens",
    # audio
    "missing_audio": "the audio file does not exist",
    "unreadable_audio": "the audio file cannot be opened (permissions)",
    "corrupt_audio": "the audio file cannot be decoded",
    "empty_audio": "the audio has zero samples",
    "low_sample_rate": "the audio's sample rate is below min_sample_rate",
    "too_short": "duration below min_duration",
    "too_long": "duration above max_duration",
    "duration_mismatch": "declared duration differs from the decoded audio by more than duration_tolerance",
    "silent": "the audio's RMS level is below silence_dbfs",
    "clipped": "more than max_clip_fraction of the samples are in flat runs of >= clip_run samples at full scale",
    "bad_codes": "precomputed codes are missing, unreadable, out of range or of the wrong length",
    "too_many_codes": "more target codes than the model's max_mel_tokens",
    # pairing
    "single_utterance_speaker": "the speaker has no other utterance to use as a prompt",
    "no_same_emotion_prompt": "the speaker has no other utterance with the same emotion (prompt.same_emotion=require)",
    "no_valid_prompt": "every prompt candidate's audio was rejected",
    "bad_prompt_audio": "the row's prompt_audio_path/emotion_audio_path audio is unusable",
}


@dataclass
class Record:
    """A row whose fields passed the metadata checks; paths are absolute and inside the dataset root."""

    source: str
    line: int
    id: str
    audio_path: str
    text: str
    speaker: str
    language: str
    duration: float | None  # declared; None = read from the audio header
    emotion: str | None = None
    emotion_id: int = -1
    prompt_audio_path: str | None = None
    emotion_audio_path: str | None = None
    codes_path: str | None = None


_KNOWN = frozenset(REQUIRED + OPTIONAL + PRECOMPUTED_USED)
_STRINGS = ("audio_path", "text", "language", "emotion", "prompt_audio_path", "emotion_audio_path", "codes_path")


_PATHS = ("audio_path", "prompt_audio_path", "emotion_audio_path", "codes_path")


class RowContext:
    """What field checks need: manifest folder, dataset root, emotion labels, the format, accepted languages
    (None: those the text front end knows), counters."""

    def __init__(self, manifest_dir: Path, root: Path, emotion_labels: list[str], fmt: str,
                 languages: list[str] | None = None):
        self.manifest_dir = str(manifest_dir)
        self.root = str(root)
        self.languages = frozenset(canonical_language(x) for x in languages) if languages else KNOWN_LANGUAGES
        self._real_root = os.path.realpath(self.root)
        self._real_dirs: dict[str, tuple[str, bool]] = {}  # folder -> (real path, inside the root); rows share few
        self.emotion_index = {label: i for i, label in enumerate(emotion_labels)}
        self.fmt = fmt
        self.required = REQUIRED + (PRECOMPUTED_USED if fmt == "indextts_precomputed" else ())
        self.ignored_fields: dict[str, int] = {}
        # A plain relative path ("wavs/a.wav": no "." or ".." parts, no empty part) under a normalised
        # manifest folder inside the root resolves to folder + "/" + path, inside the root: no normpath needed.
        d, r = self.manifest_dir, self.root
        inside = d == r or d.startswith(r.rstrip(os.sep) + os.sep)
        self._plain_prefix = (d.rstrip("/") + "/" if os.sep == "/" and d.startswith("/") and os.path.normpath(d) == d
                              and inside else None)

    def resolve(self, value: str) -> str | None:
        """`resolve_path(value, manifest_dir, root)`, without the general case's cost for plain paths."""
        if (self._plain_prefix is not None and not value.startswith("/") and not value.endswith("/")
                and "//" not in value and "/." not in "/" + value):
            return self._plain_prefix + value
        return resolve_path(value, self.manifest_dir, self.root)

    def locate(self, path: str, key: str = "audio_path") -> Rejection | None:
        """None if `path` (from `resolve`) is a file whose real location is inside the root; else why not.

        Nothing is opened: a symlink (of the file or of a folder on the way) that leads outside the root is
        `path_outside_root` before any reader can see its target. Costs one lstat per row plus one realpath
        per folder and per symlinked file.
        """
        folder, _, name = path.rpartition(os.sep)
        entry = self._real_dirs.get(folder)
        if entry is None:
            real_dir = os.path.realpath(folder or os.sep)
            entry = self._real_dirs[folder] = (real_dir, _inside(real_dir, self._real_root))
        try:
            st = os.lstat(path)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            inside, exists = _inside(real, self._real_root), os.path.isfile(real)
        else:  # the file itself is no link: it is where its folder really is
            real = os.path.join(entry[0], name)
            inside, exists = entry[1], st is not None and stat.S_ISREG(st.st_mode)
        if not inside:
            return Rejection("path_outside_root", f"{key} {path} resolves to {real}, outside the dataset root "
                                                  f"{self.root} (a symlink); set data.root to a folder holding both")
        if not exists:
            return Rejection("bad_codes" if key == "codes_path" else "missing_audio", f"{key} {path} does not exist")
        return None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# An id must work as one file name (`<dir>/<id>.npy` in downstream tools): no separator, control character or
# lone surrogate; no leading dot ("." and ".." and hidden files); at most 255 bytes (the usual NAME_MAX).
_BAD_ID_CHAR = re.compile(r"[/\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BAD_ID_CHAR_LIST = re.compile(r"[\\\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # MeloTTS ids are root-relative paths
_ID_MAX_BYTES = 255


def check_id(row_id: str, fmt: str = "jsonl") -> Rejection | None:
    """Why `row_id` cannot be used as a file name, or None. MeloTTS ids are audio paths relative to the root
    (checked to stay inside it), so `/` is allowed there."""
    bad = (_BAD_ID_CHAR_LIST if fmt == "melotts" else _BAD_ID_CHAR).search(row_id)
    if bad:
        what = "a path separator" if bad.group() in "/\\" else f"control character U+{ord(bad.group()):04X}"
        return Rejection("bad_id", f"id {row_id[:60]!r} contains {what}; ids are used as file names")
    if row_id.startswith("."):
        return Rejection("bad_id", f"id {row_id[:60]!r} starts with a dot ('.', '..' or a hidden file name)")
    size = len(row_id.encode("utf-8"))
    if size > _ID_MAX_BYTES:
        return Rejection("bad_id", f"id {row_id[:40]!r}... is {size} bytes > {_ID_MAX_BYTES} (a file name's limit)")
    return None


def check_language(language: str, detected: bool, ctx: RowContext) -> Rejection | None:
    """A row's language (canonical; `detected` from the script) must be one of `ctx.languages`."""
    if language in ctx.languages:
        return None
    if detected:
        return Rejection("unknown_language", f"no language given and the text's script reads as {language!r}, "
                                             f"not one of {sorted(ctx.languages)}; set the row's language")
    return Rejection("unknown_language", f"language {language!r} is not one of {sorted(ctx.languages)} "
                                         "(data.languages lists the accepted ones)")


def check_fields(row: RawRow, ctx: RowContext) -> Record | Rejection:
    """Types, required fields, duration, emotion and paths of one parsed row.

    `language` is returned as given ("" when missing); text normalisation resolves or detects it.
    """
    if row.error is not None:
        return row.error
    f = row.fields or {}
    for key in ctx.required:
        value = f.get(key)
        if value is None or (isinstance(value, str) and not value.strip() and key != "text"):
            return Rejection("missing_field", f"field {key!r} is missing")
    if not _KNOWN.issuperset(f):
        for key in f.keys() - _KNOWN:
            ctx.ignored_fields[key] = ctx.ignored_fields.get(key, 0) + 1
    # ids and speakers are often numbers in the wild: accept ints, nothing else
    for key in ("id", "speaker"):
        if type(f[key]) not in (str, int):
            return Rejection("bad_field", f"{key} must be a string, got {type(f[key]).__name__}")
    for key in _STRINGS:
        value = f.get(key)
        if value is not None and type(value) is not str:
            return Rejection("bad_field", f"{key} must be a string, got {type(value).__name__}")

    row_id = str(f["id"])
    bad = check_id(row_id, ctx.fmt) if ctx.fmt != "melotts" else None  # MeloTTS: checked once derived below
    if bad:
        return bad

    duration = f.get("duration")
    if duration is not None:
        if isinstance(duration, bool) or not isinstance(duration, int | float):
            return Rejection("bad_duration", f"duration {duration!r} is not a number")
        if not math.isfinite(duration) or duration < 0:
            return Rejection("bad_duration", f"duration {duration!r} is not finite and >= 0")
        duration = float(duration)

    emotion, emotion_id = f.get("emotion"), -1
    if emotion is not None and emotion.strip():
        emotion = emotion.strip().lower()
        if emotion not in ctx.emotion_index:
            return Rejection("unknown_emotion", f"emotion {emotion!r} not in {sorted(ctx.emotion_index)}")
        emotion_id = ctx.emotion_index[emotion]
    else:
        emotion = None

    paths: dict[str, str | None] = {}
    for key in _PATHS:
        value = f.get(key)
        if value is None or not value.strip():
            paths[key] = None
            continue
        resolved = ctx.resolve(value.strip())
        if resolved is None:
            return Rejection("path_outside_root", f"{key} {value!r} is outside the dataset root {ctx.root}")
        paths[key] = resolved
    if ctx.fmt == "melotts":
        # the list has no id: the audio path relative to the root (inside it: no "..", no absolute path)
        row_id = os.path.splitext(os.path.relpath(paths["audio_path"], ctx.root))[0]
        bad = check_id(row_id, ctx.fmt)
        if bad:
            return bad

    return Record(
        source=row.source, line=row.line, id=row_id, audio_path=paths["audio_path"], text=f["text"],
        speaker=str(f["speaker"]).strip(), language=(f.get("language") or "").strip(), duration=duration,
        emotion=emotion, emotion_id=emotion_id, prompt_audio_path=paths["prompt_audio_path"],
        emotion_audio_path=paths["emotion_audio_path"], codes_path=paths["codes_path"],
    )


# Arrow regular expressions (RE2) for `check_fields_block`: a value Python's str.strip() would change, and a
# path that is not plain (absolute, empty, "." or ".." parts, a trailing slash).
# the characters str.isspace() / str.strip() treat as whitespace (tests/data/test_metadata.py checks the list)
PY_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
_PY_WHITESPACE = "".join(f"\\x{{{ord(c):x}}}" for c in PY_WHITESPACE)
_EDGE_WHITESPACE = f"^[{_PY_WHITESPACE}]|[{_PY_WHITESPACE}]$"
_NOT_PLAIN_PATH = r"^/|//|(^|/)\.|/$"
_ODD_ID = r"[/\\\x{0}-\x{1f}\x{7f}-\x{9f}]|^\."
_ID_TYPES = (pa.string(), pa.int64(), pa.null())
_DURATION_TYPES = (pa.float64(), pa.int64(), pa.null())


def check_fields_block(table: pa.Table, lines: list[int], source: str, ctx: RowContext) -> list[Record | None] | None:
    """`check_fields` for a block of JSON rows parsed by Arrow (`manifest.parse_json_block`), vectorised.

    Returns a `Record` for each row that certainly passes with these values, None for a row the caller
    must check with `check_fields` (it may fail, or need the general case), or None for the whole block
    when its columns do not allow the fast checks (types, an unknown field missing from some rows).
    """
    names = set(table.column_names)
    if ctx._plain_prefix is None or not all(table.column(k).null_count == 0 for k in names - _KNOWN):
        return None  # "absent" and "null" look the same in Arrow: counting ignored fields needs them everywhere
    n = table.num_rows
    slow = np.zeros(n, dtype=bool)
    cols: dict[str, list] = {}
    for key in ("id", "speaker", *_STRINGS):
        col = table.column(key) if key in names else pa.nulls(n, pa.null())
        if col.type not in (_ID_TYPES if key in ("id", "speaker") else (pa.string(), pa.null())):
            return None  # Python rejects the rows with another type (bad_field) or stringifies ints: check them
        required = key in ctx.required
        valid = pc.is_valid(col)
        if required:
            slow |= ~_bools(valid)
        if pa.types.is_string(col.type) and key != "text":
            # empty or padded: missing, stripped, or (paths, emotion) the general case
            odd = pc.or_(pc.equal(pc.utf8_length(col), 0), pc.match_substring_regex(col, _EDGE_WHITESPACE))
            if key in _PATHS:
                odd = pc.or_(odd, pc.match_substring_regex(col, _NOT_PLAIN_PATH))
            elif key == "id":  # what `check_id` may reject (RE2 has no lone surrogates: Arrow refused those)
                odd = pc.or_(pc.or_(odd, pc.match_substring_regex(col, _ODD_ID)),
                             pc.greater(pc.binary_length(col), _ID_MAX_BYTES))
            elif key == "emotion":  # only a label as written (check_fields strips and lower-cases)
                labels = [label for label in ctx.emotion_index if label == label.strip().lower()]
                odd = pc.invert(pc.is_in(col, pa.array(labels, pa.string())))
            slow |= _bools(pc.and_(valid, pc.fill_null(odd, True)))
        if pa.types.is_integer(col.type):
            col = pc.cast(col, pa.string())  # str(int): the same digits
        cols[key] = col.to_pylist()
    durations = table.column("duration") if "duration" in names else pa.nulls(n, pa.float64())
    if durations.type not in _DURATION_TYPES:
        return None
    d = durations.cast(pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN
    # (0, 2**53): finite, not negative, not -0.0, and exact even if Arrow read an integer token into a float column
    slow |= pc.is_valid(durations).to_numpy(zero_copy_only=False) & ~((d > 0) & (d < 2.0**53))
    dur = durations.cast(pa.float64()).to_pylist()

    out: list[Record | None] = []
    prefix, emotion_index = ctx._plain_prefix, ctx.emotion_index
    unknown = names - _KNOWN
    for i in range(n):
        if slow[i]:
            out.append(None)
            continue
        path, prompt, emo, codes, emotion = (cols[k][i] for k in ("audio_path", "prompt_audio_path",
                                                                  "emotion_audio_path", "codes_path", "emotion"))
        out.append(Record(
            source=source, line=lines[i], id=cols["id"][i], audio_path=prefix + path, text=cols["text"][i],
            speaker=cols["speaker"][i], language=cols["language"][i] or "", duration=dur[i], emotion=emotion,
            emotion_id=-1 if emotion is None else emotion_index[emotion],
            prompt_audio_path=None if prompt is None else prefix + prompt,
            emotion_audio_path=None if emo is None else prefix + emo,
            codes_path=None if codes is None else prefix + codes,
        ))
    fast = int(n - slow.sum())
    for key in unknown:  # rows checked here (the others are counted by check_fields)
        ctx.ignored_fields[key] = ctx.ignored_fields.get(key, 0) + fast
    return out


def _bools(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool)


# Tab/newline inside a text are harmless whitespace; other C0/C1 controls, lone surrogates and private-use
# characters are not (format characters such as zero-width joiners are left to the normaliser's cleanup).
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\ue000-\uf8ff\U000f0000-\U0010ffff]")


def check_raw_text(text: str) -> Rejection | None:
    """Checks on the text as given (before normalisation)."""
    if not text.strip():
        return Rejection("empty_text", "text is empty or whitespace")
    bad = _CONTROL.search(text)
    if bad:
        return Rejection("control_chars", f"control character U+{ord(bad.group()):04X} at position {bad.start()}")
    return None


def check_normalised_text(text_norm: str) -> Rejection | None:
    """A normalised text must still contain something to say."""
    # isalpha() is exactly the L* categories: most texts are decided by their first character
    if not text_norm[:1].isalpha() and not any(unicodedata.category(ch)[0] in "LN" for ch in text_norm):
        return Rejection("no_speakable_text", f"no letters or digits in {text_norm[:40]!r}")
    return None


def check_duration(duration: float, min_s: float, max_s: float) -> Rejection | None:
    if duration < min_s:
        return Rejection("too_short", f"{duration:.2f} s < min_duration {min_s} s")
    if duration > max_s:
        return Rejection("too_long", f"{duration:.2f} s > max_duration {max_s} s")
    return None


def check_audio(wav: np.ndarray, sr: int, silence_dbfs: float, clip_level: float,
                max_clip_fraction: float, clip_run: int = 3) -> Rejection | None:
    """Level checks on mono float samples in [-1, 1] (before resampling, so clipping is seen as recorded).

    Clipping is a flat top: `clip_run` or more consecutive samples at |x| >= `clip_level` with one and the
    same value (the converter's rail). Loud clean speech whose peaks touch full scale has single peak samples,
    or rounded tops whose values differ, and is kept.
    """
    if wav.size == 0:
        return Rejection("empty_audio", "zero samples")
    if not np.isfinite(wav).all():
        return Rejection("corrupt_audio", "samples are NaN or infinite")
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    dbfs = 20.0 * math.log10(rms) if rms > 0 else -math.inf
    if dbfs < silence_dbfs:
        return Rejection("silent", f"RMS {dbfs:.1f} dBFS < silence_dbfs {silence_dbfs}")
    clipped = clipped_samples(wav, clip_level, clip_run) / wav.size
    if clipped > max_clip_fraction:
        return Rejection("clipped", f"{clipped:.2%} of samples in flat runs of >= {clip_run} at |x| >= {clip_level}")
    return None


def clipped_samples(wav: np.ndarray, clip_level: float, clip_run: int) -> int:
    """How many samples lie in runs of >= `clip_run` equal consecutive samples at |x| >= `clip_level`."""
    hot = np.abs(wav) >= clip_level
    if not hot.any():
        return 0
    if clip_run <= 1:
        return int(hot.sum())
    # same[i]: sample i+1 continues a flat top from sample i; a run of k samples is k-1 such pairs
    same = hot[1:] & hot[:-1] & (wav[1:] == wav[:-1])
    edges = np.flatnonzero(np.diff(np.r_[0, same.view(np.int8), 0]))
    pairs = edges[1::2] - edges[::2]
    return int((pairs[pairs >= clip_run - 1] + 1).sum())
