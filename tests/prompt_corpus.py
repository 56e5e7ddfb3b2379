"""Prompts that reach every corner of CLIP's tokenizer, for id-for-id parity tests.

Hand-written prompts of each kind, then every one of them again under transformations real
users apply without thinking (capitals, stray whitespace, weights, joining two prompts).
"""

BASE = [
    # ordinary prompts
    "a photo of an astronaut riding a horse on mars",
    "a watercolor painting of a fox in the snow",
    "portrait of an old fisherman, dramatic lighting, 85mm, f/1.8",
    "isometric pixel art of a tiny island with a lighthouse",
    "the great wave off kanagawa, ukiyo-e style",
    "A cozy cabin in a snowy forest at night, warm light in the windows",
    # punctuation and prompt syntax
    "masterpiece, best quality, (extremely detailed:1.3), [blurry], {cute}",
    "((red hair)), (((blue eyes))), [[freckles]]",
    "a cat | a dog | a bird",
    "cyberpunk city AND neon rain AND flying cars",
    "<lora:add_detail:0.7> <hypernet:anime:1>, 1girl, solo",
    "embedding:easynegative, bad-hands-5, ng_deepnegative_v1_75t",
    'a sign that says "OPEN 24/7"!!!',
    "question? exclamation! ellipsis... semicolon; colon: dash - em—dash",
    "it's, they're, we've, I'm, you'll, he'd, isn't, DON'T, Shouldn'T",
    "#hashtag @mention $100 50% a&b a*b a^b ~tilde `backtick` \\backslash",
    "under_score, hyphen-ated, dot.separated, slash/separated, plus+sign",
    "quotes 'single' \"double\" «guillemets» „low“ ‘curly’ “curly”",
    "brackets (round) [square] {curly} <angle>",
    # numbers
    "1girl 2boys 3cats, 1920x1080, 8k uhd, 4K, 16:9",
    "the year 1999, 3.14159, 1/2 cup, 10,000 lanterns, 007",
    "①②③ ⅠⅡⅢ ½ ¾ ² ³ ٣ ४ ๕",
    # accents and Latin-script languages
    "café crème brûlée, naïve façade, jalapeño, smörgåsbord",
    "Ångström, Øresund, Łódź, Ðorđe, straße, ÆØÅ æøå",
    "un château au bord de la mer, peint à l'huile",
    "ein gemütliches Café in Wien im Herbst",
    "Crème de la crème of the Côte d'Azur",
    "Türkçe: İstanbul'da güneş batarken",
    "Tiếng Việt: phố cổ Hội An về đêm",
    # other scripts
    "東京の夜景、ネオン、雨",
    "一只猫坐在窗台上，水彩画",
    "서울의 밤거리, 네온사인",
    "Москва зимой, акварель",
    "Ελληνικό νησί με λευκά σπίτια",
    "مدينة عربية قديمة عند الغروب",
    "עיר עתיקה בירושלים",
    "भारतीय मंदिर सूर्यास्त के समय",
    "ตลาดน้ำในกรุงเทพ",
    "ქართული ანბანი",
    "mixed 日本 and English and русский in one prompt",
    # emoji and symbols
    "emoji 🐱🚀✨ sparkles",
    "family 👨‍👩‍👧‍👦 flag 🇯🇵 skin tone 👍🏽 keycap 1️⃣",
    "symbols © ® ™ ∞ ≠ ≤ ≥ ± × ÷ √ ∑ π Ω µ °",
    "arrows → ← ↑ ↓ ⇒ and stars ★ ☆ and hearts ♥ ❤️",
    "box drawing ┌─┐ │ └─┘ and braille ⠁⠃⠉",
    "math 𝓕𝓪𝓷𝓬𝔂 𝕯𝖔𝖚𝖇𝖑𝖊 𝟙𝟚𝟛",
    # whitespace
    "",
    " ",
    "   \t\n  ",
    "tabs\tbetween\twords",
    "new\nlines\nbetween\nwords",
    "windows\r\nline\r\nends",
    "many     spaces     between     words",
    "  leading and trailing spaces  ",
    "non-breaking\u00a0space and\u2003em space and\u3000ideographic space",
    "zero\u200bwidth\u200bspaces and soft\u00adhyphens",
    # special tokens typed by users
    "<|startoftext|> literal start token",
    "literal end token <|endoftext|> in the middle",
    "<|endoftext|>",
    # long prompts, over 77 tokens
    "a " * 120,
    " ".join(f"word{i}" for i in range(90)),
    ", ".join(["highly detailed"] * 40),
    "an extremely long and winding description of a fantastical landscape " * 8,
    "東京" * 60,
    "🐱" * 100,
]

TRANSFORMS = [
    lambda p: p,
    lambda p: p.upper(),
    lambda p: f"  {p}\t",
    lambda p: f"({p}:1.2)",
]


def corpus() -> list[str]:
    prompts = [transform(p) for p in BASE for transform in TRANSFORMS]
    prompts += [f"{a}, {b}" for a, b in zip(BASE, BASE[1:] + BASE[:1], strict=True)]
    return list(dict.fromkeys(prompts))  # unique, in order
