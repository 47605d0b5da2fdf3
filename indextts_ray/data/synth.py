"""A deterministic, speech-like synthetic corpus for the demo and the tests (pure numpy, no downloads).

What makes it useful for training and testing, not just noise:

* **Text → audio is learnable.** Every Hangul syllable is decomposed into jamo and every English letter is
  mapped to a phone; each phone has its own formant targets (vowels, sonorants) or noise band (stops,
  fricatives) and duration. The same text gives the same phone sequence, and longer texts give longer audio.
* **Speakers differ in timbre**: mean f0, formant scale (vocal-tract length), spectral tilt, breathiness
  and speaking rate (`Voice`). f0 is spaced geometrically between speakers so it is measurably distinct.
* **Emotions differ in prosody**: f0 level and range, contour, rate, energy and tremolo (`EMOTION_PROSODY`).
* **Long recordings with known pauses** (`make_long_recording`): speech chunks separated by ≥ 1 s
  silences at exactly known times, including a too-short chunk (to be merged) and an over-long chunk
  (> 15 s) whose longest internal pause is known (to be split), saved with their ground truth.

Synthesis is source-filter: a Rosenberg glottal pulse train (plus breath noise) and white noise, shaped per
5 ms frame by a formant/noise-band envelope with windowed-FFT overlap-add filtering.

    corpus/
      manifest.jsonl           {id, audio_path, text, speaker, language, duration, emotion}
      wavs/<speaker>/<id>.wav  PCM16 mono
      long/<speaker>/<emotion>/<name>.wav
      long_recordings.json     [{audio_path, speaker, emotion, language, duration, speech, pauses, split_pauses}]
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from indextts_ray.io_utils import atomic_write, atomic_write_json, atomic_write_text
from indextts_ray.model.config import EMOTION_LABELS

EMOTIONS: tuple[str, ...] = tuple(EMOTION_LABELS)  # the model's emotion classes, in its order

FRAME_S = 0.005  # envelope frame (5 ms): fine enough for 10-30 ms consonant events
NOISE_FLOOR_DBFS = -65.0  # recordings are never digital silence; far below the -40 dBFS segmentation default
SPEECH_RMS = 0.1  # target RMS of vowel frames at energy 1.0 (-20 dBFS)

# ----------------------------------------------------------------------------- voices and prosody


@dataclass(frozen=True)
class Voice:
    """Timbre of one synthetic speaker."""

    name: str
    f0: float  # Hz, mean f0 at neutral emotion
    formant_scale: float  # >1 = shorter vocal tract (higher formants)
    tilt: float  # spectral tilt exponent: larger = darker voice
    breathiness: float  # breath-noise share of the voiced source
    rate: float  # speaking-rate factor


@dataclass(frozen=True)
class Prosody:
    """How an emotion changes the delivery of the same text."""

    f0_scale: float  # multiplies the speaker's f0
    f0_range: float  # relative size of word accents and declination
    rate: float  # multiplies speaking rate (>1 = faster, shorter audio)
    energy: float  # multiplies the loudness
    tremolo: float  # relative 5.5 Hz f0 modulation
    contour: str  # "fall", "rise" or "flat"
    tilt_shift: float  # added to the voice's tilt (negative = brighter/tenser)


EMOTION_PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(1.00, 0.10, 1.00, 1.00, 0.000, "fall", 0.0),
    "happy": Prosody(1.18, 0.25, 1.10, 1.30, 0.000, "fall", -0.2),
    "sad": Prosody(0.90, 0.05, 0.80, 0.60, 0.000, "fall", 0.3),
    "angry": Prosody(1.08, 0.20, 1.15, 1.60, 0.000, "fall", -0.4),
    "depressed": Prosody(0.84, 0.03, 0.70, 0.45, 0.000, "flat", 0.4),
    "surprised": Prosody(1.30, 0.35, 1.00, 1.20, 0.000, "rise", -0.1),
    "fearful": Prosody(1.22, 0.12, 1.25, 0.80, 0.040, "rise", 0.1),
}


def make_voices(n_speakers: int, seed: int) -> list[Voice]:
    """`n_speakers` voices whose mean f0 is spread geometrically over 95–235 Hz (distinct by construction)."""
    width = max(2, len(str(n_speakers - 1)))
    f0s = np.geomspace(95.0, 235.0, n_speakers) if n_speakers > 1 else np.array([140.0])
    voices = []
    for i, f0 in enumerate(f0s):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0, i]))
        pos = i / max(1, n_speakers - 1)  # higher voices get shorter vocal tracts, as in real speakers
        voices.append(Voice(
            name=f"spk{i:0{width}d}",
            f0=float(f0),
            formant_scale=float(0.88 + 0.30 * pos + rng.uniform(-0.03, 0.03)),
            tilt=float(rng.uniform(0.6, 1.4)),
            breathiness=float(rng.uniform(0.02, 0.12)),
            rate=float(rng.uniform(0.9, 1.1)),
        ))
    return voices


# ----------------------------------------------------------------------------- texts

WORDS: dict[str, tuple[str, ...]] = {
    "ko": ("안녕하세요", "오늘", "날씨", "정말", "좋아요", "우리", "학교", "친구", "사랑", "시간", "음악", "하늘",
           "바다", "나무", "사람", "마음", "이야기", "노래", "행복", "가족", "도시", "아침", "저녁", "커피", "책",
           "공부", "여행", "바람", "꽃", "강아지", "고양이", "생각", "내일", "어제", "함께", "다시", "조금", "많이",
           "빨리", "천천히"),
    "en": ("hello", "today", "weather", "really", "good", "we", "school", "friend", "love", "time", "music", "sky",
           "sea", "tree", "people", "heart", "story", "song", "happy", "family", "city", "morning", "evening",
           "coffee", "book", "study", "travel", "wind", "flower", "puppy", "cat", "think", "tomorrow", "yesterday",
           "together", "again", "little", "many", "quickly", "slowly"),
}
END_MARK = {"happy": "!", "angry": "!", "surprised": "?"}


def make_text(rng: np.random.Generator, language: str, emotion: str, n_words: tuple[int, int] = (3, 9)) -> str:
    """A sentence of `n_words` random words from the built-in list of `language`."""
    if language not in WORDS:
        raise ValueError(f"no built-in word list for language {language!r}; known: {sorted(WORDS)}")
    words = list(rng.choice(WORDS[language], size=int(rng.integers(n_words[0], n_words[1] + 1))))
    if len(words) >= 6:  # a comma gives a short phrase pause
        words[len(words) // 2 - 1] += ","
    text = " ".join(words) + END_MARK.get(emotion, ".")
    return text[0].upper() + text[1:] if language == "en" else text


# ----------------------------------------------------------------------------- phones

# (F1, F2, F3) in Hz for a reference (scale 1.0) vocal tract.
VOWELS: dict[str, tuple[float, float, float]] = {
    "a": (730, 1090, 2440), "ae": (600, 1850, 2500), "e": (480, 2000, 2600), "eo": (600, 1170, 2390),
    "o": (450, 800, 2400), "u": (320, 870, 2240), "eu": (350, 1400, 2300), "i": (280, 2250, 3000),
    "uh": (440, 1020, 2240),
}
SONORANTS: dict[str, tuple[float, float, float]] = {
    "m": (280, 1000, 2300), "n": (280, 1500, 2500), "ng": (280, 2000, 2600), "l": (360, 1100, 2700),
    "r": (420, 1300, 1700), "w": (300, 700, 2200),
}
# stops: burst centre/bandwidth (Hz), closure (s), voiced closure (voice bar), aspiration (s)
STOPS: dict[str, tuple[float, float, float, bool, float]] = {
    "p": (800, 600, 0.040, False, 0.030), "b": (800, 600, 0.035, True, 0.0), "pp": (800, 600, 0.060, False, 0.0),
    "t": (4000, 1500, 0.040, False, 0.030), "d": (4000, 1500, 0.035, True, 0.0), "tt": (4000, 1500, 0.060, False, 0.0),
    "k": (2000, 800, 0.040, False, 0.030), "g": (2000, 800, 0.035, True, 0.0), "kk": (2000, 800, 0.060, False, 0.0),
}
# fricatives/affricates: centre, bandwidth, noise amplitude, duration (s), voiced, closure before (s)
FRICATIVES: dict[str, tuple[float, float, float, float, bool, float]] = {
    "s": (6500, 1500, 0.30, 0.090, False, 0.0), "ss": (6500, 1500, 0.35, 0.120, False, 0.0),
    "z": (6500, 1500, 0.20, 0.080, True, 0.0), "f": (6000, 3000, 0.12, 0.090, False, 0.0),
    "v": (6000, 3000, 0.08, 0.070, True, 0.0), "h": (1500, 1500, 0.12, 0.060, False, 0.0),
    "j": (3000, 1000, 0.20, 0.050, True, 0.030), "jj": (3000, 1000, 0.25, 0.060, False, 0.050),
    "ch": (3000, 1000, 0.30, 0.080, False, 0.030),
}
VOWEL_S, SONORANT_S, WORD_GAP_S, COMMA_S = 0.110, 0.060, 0.070, 0.180

# Hangul jamo (Unicode order) -> phones
_KO_INITIAL = ("g", "kk", "n", "d", "tt", "r", "m", "b", "pp", "s", "ss", "", "j", "jj", "ch", "k", "t", "p", "h")
_KO_VOWEL = (("", "a"), ("", "ae"), ("i", "a"), ("i", "ae"), ("", "eo"), ("", "e"), ("i", "eo"), ("i", "e"),
             ("", "o"), ("u", "a"), ("u", "ae"), ("u", "e"), ("i", "o"), ("", "u"), ("u", "eo"), ("u", "e"),
             ("u", "i"), ("i", "u"), ("", "eu"), ("eu", "i"), ("", "i"))
_KO_FINAL = ("", "k", "k", "k", "n", "n", "n", "t", "l", "k", "m", "l", "l", "l", "p", "l", "m", "p", "p", "t",
             "t", "ng", "t", "t", "k", "t", "p", "t")
_EN_LETTER = {"a": "a", "e": "e", "i": "i", "o": "o", "u": "uh", "y": "i", "c": "k", "q": "k", "x": "k s"}


@dataclass(frozen=True)
class Seg:
    """A stretch of constant sound type: amplitudes, formant targets (start → end) and noise band."""

    dur: float  # seconds at rate 1
    voiced: float  # glottal-source amplitude
    noise: float  # noise-source amplitude
    f_start: tuple[float, float, float]
    f_end: tuple[float, float, float]
    fc: float = 3000.0  # noise band centre (Hz)
    bw: float = 1500.0  # noise band width (Hz)
    word: int = -1  # word index for accents; -1 for pauses


def _phone_segs(phone: str, glide: str, prev_f: tuple[float, float, float], word: int) -> list[Seg]:
    if phone in VOWELS:
        f = VOWELS[phone]
        if glide:  # y-/w- diphthong: formants move from the glide target into the vowel over the first 35 %
            g = VOWELS[glide]
            return [Seg(VOWEL_S * 0.35, 1.0, 0.0, g, f, word=word), Seg(VOWEL_S * 0.65, 1.0, 0.0, f, f, word=word)]
        # a short transition from the previous phone's formants, then the steady target
        return [Seg(VOWEL_S * 0.2, 1.0, 0.0, prev_f, f, word=word), Seg(VOWEL_S * 0.8, 1.0, 0.0, f, f, word=word)]
    if phone in SONORANTS:
        f = SONORANTS[phone]
        return [Seg(SONORANT_S, 0.4, 0.0, f, f, word=word)]
    if phone in STOPS:
        fc, bw, closure, voiced, asp = STOPS[phone]
        segs = [Seg(closure, 0.08 if voiced else 0.0, 0.0, (250, prev_f[1], prev_f[2]), (250, prev_f[1], prev_f[2]),
                    word=word),
                Seg(0.012, 0.0, 0.5, prev_f, prev_f, fc, bw, word=word)]
        if asp:
            segs.append(Seg(asp, 0.0, 0.15, prev_f, prev_f, 1500, 2000, word=word))
        return segs
    if phone in FRICATIVES:
        fc, bw, amp, dur, voiced, closure = FRICATIVES[phone]
        segs = [Seg(closure, 0.0, 0.0, prev_f, prev_f, word=word)] if closure else []
        segs.append(Seg(dur, 0.15 if voiced else 0.0, amp, (300, prev_f[1], prev_f[2]), (300, prev_f[1], prev_f[2]),
                        fc, bw, word=word))
        return segs
    raise KeyError(f"unknown phone {phone!r}")


def _phones_ko(word: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for ch in word:
        code = ord(ch) - 0xAC00
        if not 0 <= code < 11172:
            continue  # punctuation is handled by the caller; anything else carries no sound
        ini, (glide, vowel), fin = _KO_INITIAL[code // 588], _KO_VOWEL[(code % 588) // 28], _KO_FINAL[code % 28]
        if ini:
            out.append((ini, ""))
        out.append((vowel, glide))
        if fin:
            # word-final stops are unreleased in Korean: a closure without a burst
            out.append(("_" + fin, "") if fin in ("k", "t", "p") else (fin, ""))
    return out


def _phones_en(word: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for ch in unicodedata.normalize("NFKD", word.lower()):
        for p in _EN_LETTER.get(ch, ch).split():
            if p in VOWELS or p in SONORANTS or p in STOPS or p in FRICATIVES:
                out.append((p, ""))
    return out


def text_to_segs(text: str, language: str) -> list[Seg]:
    """The deterministic sound sequence of `text` (without leading/trailing silence)."""
    segs: list[Seg] = []
    prev_f = VOWELS["uh"]
    words = text.split()
    for w_i, word in enumerate(words):
        phones = _phones_ko(word) if language == "ko" else _phones_en(word)
        for phone, glide in phones:
            if phone.startswith("_"):  # unreleased stop
                segs.append(Seg(0.050, 0.0, 0.0, prev_f, prev_f, word=w_i))
                continue
            new = _phone_segs(phone, glide, prev_f, w_i)
            segs.extend(new)
            prev_f = new[-1].f_end
        if w_i < len(words) - 1:
            segs.append(Seg(COMMA_S if word.endswith(",") else WORD_GAP_S, 0.0, 0.0, prev_f, prev_f))
    return segs


def pause(seconds: float) -> Seg:
    return Seg(seconds, 0.0, 0.0, VOWELS["uh"], VOWELS["uh"])


# ----------------------------------------------------------------------------- rendering


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    k = np.hanning(width + 2)[1:-1]
    k /= k.sum()
    pad = width // 2
    xp = np.pad(x, [(pad, width - 1 - pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    return np.stack([np.convolve(xp[:, j], k, mode="valid") for j in range(x.shape[1])], 1) if x.ndim == 2 \
        else np.convolve(xp, k, mode="valid")


def frame_bounds(segs: list[Seg], rate: float) -> np.ndarray:
    """End frame (exclusive) of every segment, with durations divided by `rate` (rounded without drift)."""
    return np.round(np.cumsum([s.dur / rate for s in segs]) / FRAME_S).astype(int)


def _frame_tracks(segs: list[Seg], rate: float) -> dict[str, np.ndarray]:
    """Per-5 ms-frame control tracks; durations divided by `rate`."""
    bounds = frame_bounds(segs, rate)
    n = int(bounds[-1])
    t = {k: np.zeros(n) for k in ("voiced", "noise", "fc", "bw", "word")}
    t["formants"] = np.zeros((n, 3))
    start = 0
    for s, end in zip(segs, bounds):
        m = end - start
        if m <= 0:
            continue
        t["voiced"][start:end], t["noise"][start:end] = s.voiced, s.noise
        t["fc"][start:end], t["bw"][start:end], t["word"][start:end] = s.fc, s.bw, s.word
        w = np.linspace(0.0, 1.0, m, endpoint=False)[:, None]
        t["formants"][start:end] = (1 - w) * np.asarray(s.f_start) + w * np.asarray(s.f_end)
        start = end
    t["voiced"], t["noise"] = _smooth(t["voiced"], 5), _smooth(t["noise"], 3)  # 15-25 ms onsets, no clicks
    t["formants"] = _smooth(t["formants"], 5)  # coarticulation
    return t


def _f0_track(word: np.ndarray, voice: Voice, prosody: Prosody, rng: np.random.Generator) -> np.ndarray:
    n = len(word)
    pos = np.linspace(0.0, 1.0, n)
    r = prosody.f0_range
    if prosody.contour == "fall":
        rel = r * (0.5 - pos)
    elif prosody.contour == "rise":
        rel = -0.3 * r * pos + 2.0 * r * np.clip((pos - 0.75) / 0.25, 0.0, 1.0)
    else:
        rel = np.zeros(n)
    n_words = int(word.max()) + 1 if n and word.max() >= 0 else 0
    accents = r * rng.uniform(-0.5, 1.0, size=max(n_words, 1))
    rel = rel + np.where(word >= 0, accents[np.clip(word, 0, None).astype(int)], 0.0)
    rel = _smooth(rel, 13)  # accents glide over ~60 ms
    t = np.arange(n) * FRAME_S
    rel = rel + prosody.tremolo * np.sin(2 * np.pi * 5.5 * t) + 0.005 * _smooth(rng.standard_normal(n), 5)
    return voice.f0 * prosody.f0_scale * (1.0 + rel)


def _fft_size(hop: int) -> int:
    # 10 hops: a 4-hop window plus 3 hops (15 ms at any rate) each side for the filter's impulse response
    # (a 90 Hz-wide formant decays to 1.5 % in 15 ms), and a multiple of hop for a reshaped overlap-add
    return 10 * hop


def _ola_filter(src: list[np.ndarray], env: list[np.ndarray], hop: int) -> np.ndarray:
    """sum_i filter(src_i, env_i): time-varying zero-phase filtering by windowed FFT overlap-add.

    Frame f is a periodic Hann window of 4 hops (75 % overlap: the windows sum to 2) centred on envelope
    frame f, zero-padded by 3 hops each side so the filter's impulse response does not wrap around.
    """
    n, frames = len(src[0]), len(env[0])
    win, nfft = 4 * hop, _fft_size(hop)
    d = (nfft - win) // 2
    window = np.zeros(nfft, np.float32)
    window[d:d + win] = np.hanning(win + 1)[:-1]
    # x index of buffer sample 0 of frame f: f*hop + hop//2 - win//2 - d; pad the front so it is >= 0
    lead = win // 2 + d
    spec = None
    for x, e in zip(src, env):
        xp = np.concatenate([np.zeros(lead, np.float32), x.astype(np.float32), np.zeros(nfft + hop, np.float32)])
        fr = np.lib.stride_tricks.sliding_window_view(xp, nfft)[hop // 2::hop][:frames] * window  # (F, nfft)
        s = np.fft.rfft(fr, axis=1) * e
        spec = s if spec is None else spec + s
    out = np.fft.irfft(spec, n=nfft, axis=1).reshape(frames, nfft // hop, hop)  # (F, 10, hop)
    y = np.zeros((frames + nfft // hop, hop), np.float32)
    for j in range(nfft // hop):  # overlap-add as 10 shifted block sums
        y[j:j + frames] += out[:, j]
    return y.reshape(-1)[lead - hop // 2:lead - hop // 2 + n] / 2.0


def render(segs: list[Seg], voice: Voice, prosody: Prosody, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Float32 waveform of `segs` spoken by `voice` with `prosody` (RMS of vowel frames = 0.1 × energy)."""
    hop = int(round(sr * FRAME_S))
    tr = _frame_tracks(segs, prosody.rate * voice.rate)
    frames = len(tr["voiced"])
    n = frames * hop
    f0 = _f0_track(tr["word"], voice, prosody, rng)

    # glottal source: Rosenberg flow pulse, differentiated (the lip radiation) -> bright, harmonic-rich
    f0_s = np.interp(np.arange(n) / hop - 0.5, np.arange(frames), f0)
    phase = np.cumsum(f0_s / sr) % 1.0
    tp, tn = 0.4, 0.16
    flow = np.where(phase < tp, 0.5 * (1 - np.cos(np.pi * phase / tp)),
                    np.where(phase < tp + tn, np.cos(np.pi * (phase - tp) / (2 * tn)), 0.0))
    glottal = np.diff(flow, prepend=0.0)
    glottal /= np.sqrt(np.mean(glottal**2)) + 1e-12
    voiced_src = (1 - voice.breathiness) * glottal + voice.breathiness * 3.0 * rng.standard_normal(n)
    noise_src = rng.standard_normal(n)

    freqs = np.fft.rfftfreq(_fft_size(hop), 1.0 / sr).astype(np.float32)[None, :]  # (1, K)
    formants = (tr["formants"] * voice.formant_scale).astype(np.float32)  # (F, 3)
    v_env = np.full((frames, freqs.shape[1]), 0.01, np.float32)
    for j, (amp, bw) in enumerate(((1.0, 90.0), (0.7, 110.0), (0.4, 160.0))):
        v_env += amp / np.sqrt(1.0 + np.square((freqs - formants[:, j:j + 1]) * (2.0 / bw)))
    v_env *= ((1.0 + freqs / 400.0) ** -(voice.tilt + prosody.tilt_shift)).astype(np.float32)
    v_env *= tr["voiced"][:, None].astype(np.float32)
    n_env = np.zeros_like(v_env)
    on = tr["noise"] > 1e-4  # noise bands only where there is noise (most frames are voiced)
    fc = (tr["fc"][on, None] * voice.formant_scale**0.5).astype(np.float32)
    n_env[on] = tr["noise"][on, None] * np.exp(-0.5 * np.square((freqs - fc) / tr["bw"][on, None].astype(np.float32)))
    y = _ola_filter([voiced_src, noise_src], [v_env, n_env], hop)

    vowel = np.repeat(tr["voiced"] > 0.9, hop)
    rms = np.sqrt(np.mean(y[vowel] ** 2)) if vowel.any() else np.sqrt(np.mean(y**2)) + 1e-12
    y = y.astype(np.float64) * (SPEECH_RMS * prosody.energy / rms)
    peak = np.abs(y).max()
    if peak > 0.95:  # loud emotions: keep the waveform unclipped (PCM16) rather than distort it
        y *= 0.95 / peak
    return y.astype(np.float32)


def noise_floor(n: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.standard_normal(n) * 10 ** (NOISE_FLOOR_DBFS / 20)).astype(np.float32)


def speak(text: str, language: str, voice: Voice, emotion: str, rng: np.random.Generator, sr: int,
          lead: float = 0.2, tail: float = 0.2) -> np.ndarray:
    """One utterance of `text` with `lead`/`tail` seconds of (noise-floor) silence."""
    segs = [pause(lead)] + text_to_segs(text, language) + [pause(tail)]
    y = render(segs, voice, EMOTION_PROSODY[emotion], rng, sr)
    return y + noise_floor(len(y), rng)


# ----------------------------------------------------------------------------- long recordings


def _chunk_segs(rng: np.random.Generator, language: str, emotion: str, rate: float, target_s: float,
                min_frac: float, n_words: tuple[int, int],
                pause_range: tuple[float, float]) -> tuple[list[Seg], list[str]]:
    """Sentences joined by short pauses, real duration (after `rate`) in [`min_frac`, 1] × `target_s`.

    A sentence that would overshoot the target is skipped (another is drawn), so chunk lengths are
    controlled; the pause lengths are real seconds (pre-multiplied by the rate they will be divided by).
    """
    segs: list[Seg] = []
    texts: list[str] = []
    total = 0.0
    fails = 0
    for _ in range(500):
        # when sentences keep overshooting, the gap left is small: fill it with one-word sentences
        text = make_text(rng, language, emotion, n_words=n_words if fails < 20 else (1, 1))
        cand = ([pause(float(rng.uniform(*pause_range)) * rate)] if segs else []) + text_to_segs(text, language)
        new_total = total + sum(s.dur for s in cand) / rate
        if new_total > target_s:
            fails += 1
            continue
        fails = 0
        segs += cand
        texts.append(text)
        total = new_total
        if total >= min_frac * target_s:
            return segs, texts
    raise RuntimeError(f"could not fill a {target_s:.1f} s chunk ({language}, {emotion}) from the word lists")


def _vowel_edges(segs: list[Seg]) -> list[Seg]:
    """`segs` without the sounds before the first / after the last vowel, so a chunk starts and ends loud.

    Quiet edge consonants (an [h], a stop closure) sit near or below any silence threshold; cutting them
    makes the speech edges unambiguous for the segmentation tests.
    """
    loud = [i for i, s in enumerate(segs) if s.voiced >= 0.9]
    return segs[loud[0]:loud[-1] + 1]


def make_long_recording(seed: int, voice: Voice, emotion: str, language: str, sr: int) -> tuple[np.ndarray, dict]:
    """A ~50 s recording: 5 speech chunks separated by 1.2–2.0 s silences, and its ground truth.

    Chunk plan (or its reverse): three normal chunks (3.4–9 s), one short chunk (0.4–2.4 s, to be merged
    with a neighbour) never next to the long chunk, and one long chunk (two 7.8–10.5 s halves joined by a
    0.6–0.75 s pause, the longest pause inside it; its other pauses are 0.2–0.35 s). Every chunk starts
    and ends on a vowel (`_vowel_edges`), and the edges are known from the synthesis schedule.
    Returned truth (seconds): `speech` [[start, end]] per chunk, `pauses` between chunks, `split_pauses`
    inside the long chunk, `texts` the sentences each chunk was built from (edge consonants cut).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    prosody = EMOTION_PROSODY[emotion]
    rate = prosody.rate * voice.rate  # all planned durations below are real seconds
    hop = int(round(sr * FRAME_S))
    kinds = ["normal", "short", "normal", "long", "normal"]  # short never touches long
    if rng.random() < 0.5:
        kinds.reverse()
    short_pause, margin = (0.2, 0.35), pause(0.05 * rate)  # margins let the onsets ramp up naturally
    # each chunk: (audio, texts, speech [a, b) and split pause [a, b) in samples of the chunk)
    chunks: list[tuple[np.ndarray, list[str], tuple[int, int], tuple[int, int] | None]] = []
    for kind in kinds:
        if kind == "long":
            a, ta = _chunk_segs(rng, language, emotion, rate, float(rng.uniform(9.0, 10.5)), 0.9, (2, 5), short_pause)
            b, tb = _chunk_segs(rng, language, emotion, rate, float(rng.uniform(9.0, 10.5)), 0.9, (2, 5), short_pause)
            a, b = _vowel_edges(a), _vowel_edges(b)
            segs, texts = [margin] + a + [pause(float(rng.uniform(0.6, 0.75)) * rate)] + b + [margin], ta + tb
            split_seg = 1 + len(a)
        else:
            target, frac, words = (float(rng.uniform(1.6, 2.4)), 0.5, (1, 3)) if kind == "short" else \
                (float(rng.uniform(5.0, 9.0)), 0.75, (2, 5))
            body, texts = _chunk_segs(rng, language, emotion, rate, target, frac, words, short_pause)
            segs, split_seg = [margin] + _vowel_edges(body) + [margin], None
        ends = frame_bounds(segs, rate) * hop
        split = None if split_seg is None else (int(ends[split_seg - 1]), int(ends[split_seg]))
        chunks.append((render(segs, voice, prosody, rng, sr), texts, (int(ends[0]), int(ends[-2])), split))
    gaps = [int(round(float(rng.uniform(1.2, 2.0)) * sr)) for _ in range(len(chunks) - 1)]

    edge = int(0.8 * sr)
    out = noise_floor(edge * 2 + sum(b - a for _, _, (a, b), _ in chunks) + sum(gaps), rng)
    cursor = edge  # where the next chunk's speech starts
    truth: dict = {"speech": [], "pauses": [], "split_pauses": [], "texts": []}
    for i, (y, texts, (a, b), split) in enumerate(chunks):
        start = cursor - a  # chunk sample 0 in the recording; its margins overlap the silences
        lo, hi = max(start, 0), min(start + len(y), len(out))
        out[lo:hi] += y[lo - start:hi - start]
        truth["speech"].append([cursor / sr, (start + b) / sr])
        truth["texts"].append(" ".join(texts))
        if split is not None:
            truth["split_pauses"].append([(start + split[0]) / sr, (start + split[1]) / sr])
        cursor = start + b
        if i < len(gaps):
            truth["pauses"].append([cursor / sr, (cursor + gaps[i]) / sr])
            cursor += gaps[i]
    truth = {k: [[round(x, 4) for x in v] if isinstance(v, list) else v for v in vs] for k, vs in truth.items()}
    return np.clip(out, -1.0, 1.0), truth


# ----------------------------------------------------------------------------- corpus


def _write_wav(path: Path, y: np.ndarray, sr: int) -> None:
    atomic_write(path, lambda tmp: sf.write(tmp, y, sr, subtype="PCM_16", format="WAV"))


def make_corpus(
    out_dir: Path,
    *,
    n_speakers: int = 4,
    utts_per_speaker: int = 8,
    languages: tuple[str, ...] = ("ko", "en"),
    emotions: tuple[str, ...] = EMOTIONS,
    seed: int = 0,
    sample_rate: int = 24000,
    n_long_recordings: int = 2,
) -> Path:
    """Write a synthetic corpus under `out_dir` and return the path of its `manifest.jsonl`.

    Args:
        out_dir: output folder (created; existing files of the same names are overwritten).
        n_speakers: number of voices (distinct mean f0, formants, tilt).
        utts_per_speaker: utterances per speaker; utterance u of speaker s gets emotion
            `emotions[(s + u) % len(emotions)]` and language `languages[(s + u) % len(languages)]`.
        languages: subset of `WORDS` ("ko", "en").
        emotions: subset of `EMOTIONS`.
        seed: everything (voices, texts, noise) derives from it; same seed = same bytes.
        sample_rate: Hz of the written wavs.
        n_long_recordings: ~50 s recordings with known pauses under `long/` (+ `long_recordings.json`).
    """
    if n_speakers < 1 or utts_per_speaker < 0 or n_long_recordings < 0:
        raise ValueError("need n_speakers >= 1, utts_per_speaker >= 0, n_long_recordings >= 0")
    unknown = [e for e in emotions if e not in EMOTION_PROSODY] + [lang for lang in languages if lang not in WORDS]
    if unknown or not emotions or not languages:
        raise ValueError(f"unknown or empty emotions/languages {unknown}; known: {list(EMOTIONS)}, {sorted(WORDS)}")
    out_dir = Path(out_dir)
    voices = make_voices(n_speakers, seed)
    rows = []
    for s, voice in enumerate(voices):
        for u in range(utts_per_speaker):
            rng = np.random.default_rng(np.random.SeedSequence([seed, 1, s, u]))
            emotion, language = emotions[(s + u) % len(emotions)], languages[(s + u) % len(languages)]
            text = make_text(rng, language, emotion)
            y = speak(text, language, voice, emotion, rng, sample_rate)
            utt_id = f"{voice.name}_{u:04d}"
            rel = Path("wavs") / voice.name / f"{utt_id}.wav"
            _write_wav(out_dir / rel, y, sample_rate)
            rows.append({"id": utt_id, "audio_path": rel.as_posix(), "text": text, "speaker": voice.name,
                         "language": language, "duration": round(len(y) / sample_rate, 6), "emotion": emotion})
    long_rows = []
    for r in range(n_long_recordings):
        voice, emotion = voices[r % n_speakers], emotions[r % len(emotions)]
        language = languages[r % len(languages)]
        y, truth = make_long_recording(seed * 1000 + r, voice, emotion, language, sample_rate)
        rel = Path("long") / voice.name / emotion / f"long_{r:03d}.wav"
        _write_wav(out_dir / rel, y, sample_rate)
        long_rows.append({"audio_path": rel.as_posix(), "speaker": voice.name, "emotion": emotion,
                          "language": language, "duration": round(len(y) / sample_rate, 6), **truth})
    manifest = out_dir / "manifest.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    if n_long_recordings:
        atomic_write_json(out_dir / "long_recordings.json", long_rows)
    return manifest
