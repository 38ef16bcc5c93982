"""Clean literary and conversational text survives the default filters with every line intact.

Corpora per genre: Tang poems (the shared file, single and as ten-poem anthologies), ci-like
anthologies (tune-title + author header lines, then short verse lines, re-lined from the Tang
poems' phrases), song lyrics with a repeated chorus, classical prose, dialogue scripts and
Chinese lists (recipes, tables of contents, itineraries); English verse/dialogue from the shared
Shakespeare file. A document *survives* when ``data prepare``'s cleaning + filters keep it and
change no line. ``python tests/data/test_prepare_genres.py`` prints the survival table.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from seekforge.data import filters as F
from seekforge.data.clean import CleanConfig, clean_text
from seekforge.data.text import detect_language

TUNES = ("浣溪沙", "菩萨蛮", "蝶恋花", "水调歌头", "如梦令", "西江月", "临江仙", "鹧鸪天", "念奴娇", "满江红",
         "虞美人", "卜算子", "清平乐", "江城子", "点绛唇", "渔家傲", "青玉案", "声声慢", "雨霖铃", "忆秦娥")
AUTHORS = ("苏轼", "李清照", "柳永", "辛弃疾", "晏殊", "欧阳修", "秦观", "周邦彦", "姜夔", "陆游")

LYRIC_LINES = (
    "夜风吹过安静的街", "路灯把影子拉得很长", "你说过的话还在耳边", "我一个人走回原来的地方",
    "雨落在窗前", "窗外的城市慢慢睡着", "我数着天上的星星", "想起那年夏天的海",
    "你笑着跑向远方", "回头的时候眼里有光", "时间不会为谁停留", "我们终究要学会长大",
    "把心事写进日记", "把思念折成纸船", "让它漂过那条小河", "漂到你在的地方",
    "站台上的人来来往往", "火车带走了谁的青春", "我还记得你的名字", "却忘了你的模样",
    "山那边有一片花海", "花开的时候你会不会来", "我在老地方等你", "等到月亮爬上山",
)
CHORUS = ("啦啦啦 唱给你听", "这首歌只属于你", "不管明天有多远", "我都会在这里等你")

CLASSICAL_PROSE = (
    "晋太元中，武陵人捕鱼为业。缘溪行，忘路之远近。忽逢桃花林，夹岸数百步，中无杂树，芳草鲜美，落英缤纷。"
    "渔人甚异之。复前行，欲穷其林。",
    "林尽水源，便得一山，山有小口，仿佛若有光。便舍船，从口入。初极狭，才通人。复行数十步，豁然开朗。",
    "土地平旷，屋舍俨然，有良田美池桑竹之属。阡陌交通，鸡犬相闻。其中往来种作，男女衣着，悉如外人。"
    "黄发垂髫，并怡然自乐。",
    "山不在高，有仙则名。水不在深，有龙则灵。斯是陋室，惟吾德馨。苔痕上阶绿，草色入帘青。谈笑有鸿儒，往来无白丁。",
    "水陆草木之花，可爱者甚蕃。晋陶渊明独爱菊。自李唐来，世人甚爱牡丹。予独爱莲之出淤泥而不染，濯清涟而不妖，"
    "中通外直，不蔓不枝，香远益清，亭亭净植，可远观而不可亵玩焉。",
    "古之学者必有师。师者，所以传道受业解惑也。人非生而知之者，孰能无惑？惑而不从师，其为惑也，终不解矣。",
    "道可道，非常道；名可名，非常名。无名天地之始，有名万物之母。故常无欲，以观其妙；常有欲，以观其徼。",
    "上善若水。水善利万物而不争，处众人之所恶，故几于道。居善地，心善渊，与善仁，言善信，政善治，事善能，动善时。",
    "学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？",
    "吾十有五而志于学，三十而立，四十而不惑，五十而知天命，六十而耳顺，七十而从心所欲，不逾矩。",
    "庆历四年春，滕子京谪守巴陵郡。越明年，政通人和，百废具兴。乃重修岳阳楼，增其旧制，刻唐贤今人诗赋于其上。",
    "予观夫巴陵胜状，在洞庭一湖。衔远山，吞长江，浩浩汤汤，横无际涯；朝晖夕阴，气象万千。此则岳阳楼之大观也。",
    "先帝创业未半而中道崩殂，今天下三分，益州疲弊，此诚危急存亡之秋也。然侍卫之臣不懈于内，忠志之士忘身于外者，"
    "盖追先帝之殊遇，欲报之于陛下也。",
    "北冥有鱼，其名为鲲。鲲之大，不知其几千里也。化而为鸟，其名为鹏。鹏之背，不知其几千里也；怒而飞，其翼若垂天之云。",
    "环滁皆山也。其西南诸峰，林壑尤美，望之蔚然而深秀者，琅琊也。山行六七里，渐闻水声潺潺而泻出于两峰之间者，酿泉也。",
    "壬戌之秋，七月既望，苏子与客泛舟游于赤壁之下。清风徐来，水波不兴。举酒属客，诵明月之诗，歌窈窕之章。",
)

SPEAKERS = ("老王", "小李", "张阿姨", "医生", "老师", "学生", "店主", "顾客")
DIALOGUE_LINES = (
    "你今天怎么来得这么早？", "路上车少，就早到了。", "吃过饭了吗？", "还没有呢。", "那一起去吧。", "好啊。",
    "这件衣服多少钱？", "八十块。", "能便宜点吗？", "七十五，不能再少了。", "行，我要了。", "谢谢！",
    "你哪里不舒服？", "头有点疼。", "几天了？", "两天了。", "先量一下体温。", "好的。",
    "作业写完了吗？", "快写完了。", "明天要考试。", "我知道。", "早点睡。", "嗯。",
    "外面下雨了。", "带伞了吗？", "忘了带。", "我借你一把。", "太感谢了！", "不客气。",
)

DISHES = ("西红柿炒鸡蛋", "红烧肉", "麻婆豆腐", "酸辣土豆丝", "清蒸鱼", "宫保鸡丁", "糖醋排骨", "蒜蓉西兰花")
INGREDIENTS = ("鸡蛋两个", "西红柿三个", "盐少许", "白糖一小勺", "葱一根", "姜三片", "蒜四瓣", "生抽一勺",
               "老抽半勺", "料酒一勺", "豆腐一块", "猪肉三百克", "土豆两个", "干辣椒五个", "花椒一小把")
STEPS = ("把鸡蛋打散，加一点盐。", "西红柿切成小块。", "锅里放油，烧热后倒入蛋液。", "鸡蛋炒熟后盛出备用。",
         "再放一点油，下西红柿翻炒。", "炒出汁后放入鸡蛋。", "加盐和白糖调味。", "撒上葱花就可以出锅了。",
         "肉切成小块，用开水焯一下。", "小火慢炖四十分钟。", "大火收汁。", "装盘即可。")
CHAPTERS = ("总则", "基本原理", "数据准备", "模型结构", "训练方法", "评价指标", "实验结果", "讨论", "结论",
            "附录", "参考文献", "致谢")
AFTERNOONS = ("自由活动", "去老街吃小吃", "坐船游湖", "在酒店休息", "逛博物馆", "看一场演出")
PLACES = ("故宫", "天坛", "颐和园", "长城", "西湖", "灵隐寺", "外滩", "豫园", "兵马俑", "大雁塔")


EN_LYRIC_LINES = (
    "I walk these empty streets at night", "the city lights are fading slow",
    "you said you'd never leave me here",
    "but now I'm standing in the rain", "the radio plays our favourite song", "I still remember every word",
    "we were young and we were free", "running down to the summer sea", "your laughter echoes in my head",
    "the letters that I never sent", "the train is leaving from the station", "and I am waiting by the door",
    "I count the stars above the hill", "and wonder where you are tonight",
    "the river knows the way back home",
    "so I will follow it along", "the autumn leaves are falling down", "another year has come and gone",
)
EN_CHORUS = ("oh oh hold on to me", "don't let the morning come", "we'll dance until the sky turns gold",
             "and sing it all night long")
EN_INGREDIENTS = ("2 eggs", "3 tomatoes", "a pinch of salt", "1 tsp sugar", "1 spring onion",
                  "3 slices ginger", "4 cloves garlic", "1 tbsp soy sauce", "200 g flour", "1 cup milk",
                  "2 potatoes", "50 g butter")
EN_STEPS = ("Beat the eggs with a little salt.", "Cut the tomatoes into wedges.", "Heat the oil in a wok.",
            "Scramble the eggs and set them aside.", "Fry the tomatoes until they soften.",
            "Return the eggs to the pan.", "Season with salt and sugar.",
            "Sprinkle with spring onion and serve.",
            "Preheat the oven to 180 degrees.", "Bake for forty minutes.", "Let it cool before slicing.")
EN_CHAPTERS = ("Introduction", "Background", "Data preparation", "Model architecture", "Training",
               "Evaluation", "Results", "Discussion", "Conclusion", "Appendix", "References",
               "Acknowledgements")
EN_PLACES = ("the British Museum", "Westminster Abbey", "the Tower of London", "Hyde Park", "the Louvre",
             "Notre-Dame", "the Colosseum", "the Vatican Museums", "the Acropolis", "the Alhambra")
EN_AFTERNOONS = ("free time", "a walk through the old town", "a boat trip on the river", "rest at the hotel",
                 "a cooking class", "a concert in the evening")
EN_DIALOGUE = (
    "Have you been waiting long?", "Only a few minutes.", "Shall we get some lunch?",
    "Good idea, I'm starving.",
    "How much is this jacket?", "Eighty dollars.", "Could you do seventy?", "Seventy-five, final offer.",
    "What seems to be the problem?", "I've had a headache for two days.", "Any fever?", "I don't think so.",
    "Did you finish your homework?", "Almost.", "The test is tomorrow.", "I know, I know.",
    "It's raining outside.", "Did you bring an umbrella?", "I forgot it.", "Take mine.", "Thanks a lot!",
    "You're welcome.",
)
EN_SPEAKERS = ("Anna", "Ben", "Doctor", "Teacher", "Sam", "Clerk", "Mum", "Customer")


def tang_poems(shared: Path) -> list[dict]:
    with open(shared / "pretrain" / "tang_poems.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _phrases(poems: list[dict]) -> list[str]:
    """Comma/stop-delimited phrases of the poems, with their punctuation."""
    out: list[str] = []
    for p in poems:
        buf = ""
        for ch in p["text"].replace("\n", ""):
            buf += ch
            if ch in "，。？！；":
                out.append(buf)
                buf = ""
    return out


def build_corpora(shared: Path, n: int = 60, seed: int = 0) -> dict[str, list[str]]:
    """``n`` documents per genre (deterministic)."""
    rng = random.Random(seed)
    poems = tang_poems(shared)
    phrases = _phrases(rng.sample(poems, 3000))
    corpora: dict[str, list[str]] = {}
    corpora["zh.tang_poem"] = [p["text"] for p in rng.sample(poems, 5 * n)]  # a stable share
    corpora["zh.tang_anthology"] = [
        "\n".join(f"{p['title']}\n{p['author']}\n{p['text']}" for p in rng.sample(poems, 10))
        for _ in range(n)
    ]

    def ci(author: str, tunes: list[str]) -> str:
        lines = [f"{rng.choice(tunes)}　{author}"]
        for _ in range(rng.randint(6, 12)):
            ph = rng.choice(phrases)
            if rng.random() < 0.3 and len(ph) > 4:  # ci lines are often 2-4 characters: 何意。心摇。
                ph = ph[: rng.randint(2, 3)] + "。"
            lines.append(ph)
        if rng.random() < 0.3:  # a refrain, as in 如梦令: 知否，知否？
            refrain = rng.choice(phrases)[:2]
            lines[-2:-2] = [refrain + "，", refrain + "，"]
        return "\n".join(lines)

    def anthology() -> str:  # one poet, a few tunes: header lines repeat, as in real collections
        author, tunes = rng.choice(AUTHORS), rng.sample(TUNES, 4)
        return "\n\n".join(ci(author, tunes) for _ in range(10))

    corpora["zh.ci_anthology"] = [anthology() for _ in range(n)]

    def lyrics() -> str:
        verse1, verse2 = rng.sample(LYRIC_LINES, 6), rng.sample(LYRIC_LINES, 6)
        title = f"《{rng.choice(LYRIC_LINES)[:4]}》\n作词：{rng.choice(AUTHORS)}　作曲：{rng.choice(AUTHORS)}"
        parts = [title, "\n".join(verse1), "\n".join(CHORUS), "\n".join(verse2), "\n".join(CHORUS)]
        return "\n\n".join(parts)

    corpora["zh.lyrics"] = [lyrics() for _ in range(n)]
    corpora["zh.classical_prose"] = [
        "\n".join(rng.sample(CLASSICAL_PROSE, rng.randint(2, 4))) for _ in range(n)
    ]

    def dialogue() -> str:
        a, b = rng.sample(SPEAKERS, 2)
        start = rng.randrange(0, len(DIALOGUE_LINES) - 12, 6)
        turns = DIALOGUE_LINES[start : start + 12]
        return "\n".join(f"{(a, b)[i % 2]}：{line}" for i, line in enumerate(turns))

    corpora["zh.dialogue"] = [dialogue() for _ in range(n)]

    def zh_list() -> str:
        kind = rng.randrange(3)
        if kind == 0:
            ing = rng.sample(INGREDIENTS, rng.randint(5, 8))
            steps = rng.sample(STEPS, rng.randint(4, 7))
            numbered = (f"{i}. {s}" for i, s in enumerate(steps, 1))
            return "\n".join([rng.choice(DISHES), "材料：", *ing, "做法：", *numbered])
        if kind == 1:
            chs = rng.sample(CHAPTERS, rng.randint(6, 10))
            return "\n".join(["目录", *(f"第{'一二三四五六七八九十'[i]}章　{c}" for i, c in enumerate(chs))])
        days = rng.sample(PLACES, rng.randint(4, 6))
        afternoons = rng.sample(AFTERNOONS, len(days))
        plan = (f"第{i}天：上午参观{p}，下午{a}。" for i, (p, a) in enumerate(zip(days, afternoons), 1))
        return "\n".join(["旅行计划", *plan])

    corpora["zh.list"] = [zh_list() for _ in range(n)]
    shakespeare = (shared / "pretrain" / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    starts = rng.sample(range(len(shakespeare) - 8), n)
    corpora["en.shakespeare"] = ["\n\n".join(shakespeare[s : s + 8]) for s in starts]

    def en_lyrics() -> str:
        verse1, verse2 = rng.sample(EN_LYRIC_LINES, 6), rng.sample(EN_LYRIC_LINES, 6)
        title = f"{rng.choice(EN_LYRIC_LINES).title()}\nWords and music by {rng.choice(EN_SPEAKERS)} Smith"
        parts = [title, "\n".join(verse1), "\n".join(EN_CHORUS), "\n".join(verse2), "\n".join(EN_CHORUS)]
        return "\n\n".join(parts)

    corpora["en.lyrics"] = [en_lyrics() for _ in range(n)]

    def en_dialogue() -> str:
        a, b = rng.sample(EN_SPEAKERS, 2)
        start = rng.randrange(0, len(EN_DIALOGUE) - 10)
        return "\n".join(f"{(a, b)[i % 2]}: {line}" for i, line in enumerate(EN_DIALOGUE[start : start + 10]))

    corpora["en.dialogue"] = [en_dialogue() for _ in range(n)]

    def en_list() -> str:
        kind = rng.randrange(3)
        if kind == 0:
            ing = rng.sample(EN_INGREDIENTS, rng.randint(5, 8))
            steps = (f"{i}. {s}" for i, s in enumerate(rng.sample(EN_STEPS, rng.randint(4, 7)), 1))
            return "\n".join(["Tomato and egg stir-fry", "Ingredients:", *ing, "Method:", *steps])
        if kind == 1:
            chs = rng.sample(EN_CHAPTERS, rng.randint(6, 10))
            return "\n".join(["Contents", *(f"Chapter {i}. {c}" for i, c in enumerate(chs, 1))])
        days = rng.sample(EN_PLACES, rng.randint(4, 6))
        afternoons = rng.sample(EN_AFTERNOONS, len(days))
        plan = (f"Day {i}: visit {p} in the morning, {a} in the afternoon." for i, (p, a) in
                enumerate(zip(days, afternoons), 1))
        return "\n".join(["Travel plan", *plan])

    corpora["en.list"] = [en_list() for _ in range(n)]

    def en_song() -> str:  # en.lyrics draws both verses from one pool, so they share lines; here not
        lines = rng.sample(EN_LYRIC_LINES, 12)
        title = f"{lines[0].title()}\nWords and music by {rng.choice(EN_SPEAKERS)} Smith"
        chorus = "\n".join(EN_CHORUS)
        return "\n\n".join([title, "\n".join(lines[:6]), chorus, "\n".join(lines[6:]), chorus])

    corpora["en.lyrics_distinct_verses"] = [en_song() for _ in range(n)]
    return corpora


def survives(text: str, cfg: F.FiltersConfig | None = None) -> tuple[bool, str]:
    """(kept with every line intact, why not) through cleaning + language ID + filters."""
    cleaned = clean_text(text, CleanConfig())
    out = F.run_filters(cleaned, detect_language(cleaned), cfg or F.FiltersConfig())
    if out.text is None:
        return False, out.reason or "?"
    if out.text != cleaned:
        return False, "lines_removed:" + ",".join(sorted(out.c4_lines_removed))
    return True, ""


def survival(corpora: dict[str, list[str]]) -> dict[str, tuple[float, Counter]]:
    result = {}
    for genre, docs in corpora.items():
        why = Counter(r for ok, r in map(survives, docs) if not ok)
        result[genre] = (1 - sum(why.values()) / len(docs), why)
    return result


@pytest.fixture(scope="module")
def corpora(shared_data: Path) -> dict[str, list[str]]:
    return build_corpora(shared_data)


# Every Chinese genre: the defaults keep >= 95% of its documents intact; Shakespeare and English
# dialogue >= 90%. English lists and lyrics are below that (docs/data.md says why): the floors
# here are their measured survival, so that a regression shows.
KEPT = ["zh.tang_poem", "zh.tang_anthology", "zh.ci_anthology", "zh.lyrics", "zh.classical_prose",
        "zh.dialogue", "zh.list"]
KEPT_EN = ["en.shakespeare", "en.dialogue", "en.lyrics_distinct_verses"]
FLOOR = {**dict.fromkeys(KEPT, 0.95), **dict.fromkeys(KEPT_EN, 0.9), "en.list": 0.6}


@pytest.mark.parametrize("genre", list(FLOOR))
def test_clean_genres_survive_intact(corpora, genre: str):
    docs = corpora[genre]
    failures = [(r, d) for d in docs for ok, r in [survives(d)] if not ok]
    share = 1 - len(failures) / len(docs)
    assert share >= FLOOR[genre], (genre, share, Counter(r for r, _ in failures), failures[:1])


DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def fineweb_english() -> F.FiltersConfig:
    """The filters with docs/data.md's "Reproducing FineWeb's English filters" block applied."""
    import yaml

    from seekforge.config import deep_merge, from_dict, to_dict

    doc = DOCS.read_text(encoding="utf-8")
    section = doc[doc.index("### Reproducing FineWeb's English filters"):]
    start = section.index("```yaml") + len("```yaml")
    block = section[start : section.index("```", start)]
    overrides = yaml.safe_load(block)["filters"]
    return from_dict(F.FiltersConfig, deep_merge(to_dict(F.FiltersConfig()), overrides))


def test_fineweb_english_block_restores_datatrove_defaults():
    """Every English departure is switched off by the documented block: the en tables equal the
    plain rule tables (datatrove's defaults) with Gopher's eight stop words."""
    cfg = fineweb_english()
    assert cfg.gopher_repetition.en == F.GopherRepetitionRules() == cfg.gopher_repetition.other
    assert cfg.gopher_quality.en == F.GopherQualityRules(stop_words=list(F.EN_STOP_WORDS))
    assert cfg.gopher_quality.other == F.GopherQualityRules(min_stop_words=None)
    assert cfg.c4.en == F.C4Rules() == cfg.c4.other
    assert cfg.fineweb.en == F.FineWebRules() == cfg.fineweb.other
    assert cfg.gopher_quality.zh == F.FiltersConfig().gopher_quality.zh  # zh untouched


def test_fineweb_english_is_reachable(corpora):
    """With FineWeb's own tables the English genres are dropped again, as before seekforge
    relaxed them (0% of each in docs/data.md)."""
    cfg = fineweb_english()
    for genre in ("en.shakespeare", "en.dialogue", "en.list", "en.lyrics"):
        assert not any(survives(d, cfg)[0] for d in corpora[genre][:20]), genre
    dialogue = corpora["en.dialogue"][0]
    assert survives(dialogue)[0] and not survives(dialogue, cfg)[0]


EN_JUNK = [
    ("\n".join(["Home", "About Us", "Services", "Products", "Blog", "Careers", "Contact Us", "Login",
                "Register", "FAQ", "Sitemap"]), "gopher_quality.too_few_words"),  # navigation menu
    ("Quick Links:\nHome\nShop\nSale\nNew Arrivals\nFollow Us:\nFacebook\nTwitter\nInstagram\nPinterest",
     "gopher_quality.too_few_words"),  # footer links under labels
    ("Tags: cheap flights, flights to london, cheap hotels, hotel deals, last minute travel, "
     "travel insurance, car hire, airport parking, holiday packages, city breaks, cruise deals",
     "gopher_quality.too_few_words"),  # tag cloud
    ("\n".join(["Buy now and get 50% off your first order!", "Free shipping on all orders over $50!"] * 6),
     "gopher_repetition.dup_lines"),  # repeated promo lines
    (" ".join(["best cheap viagra online pharmacy buy viagra cheap online no prescription"] * 8),
     "gopher_repetition.top_3gram"),  # keyword spam
    ("\n".join(f"{i}. best cheap car insurance quotes {c} online" for i, c in
               enumerate(["texas", "florida", "ohio", "california", "nevada", "utah", "maine", "iowa"], 1)),
     "gopher_repetition.top_2gram"),  # numbered SEO list
    ("We use cookies to improve your experience on our website. By continuing to browse, you agree "
     "to our use of cookies.\nCookie Policy\nAccept All Cookies\nManage Preferences\nPrivacy Policy",
     "c4.too_few_sentences"),  # cookie banner
    ("\n".join(["Brand: Acme", "Model: X200", "Color: Black", "Weight: 1.2 kg", "Size: XL", "Material: Nylon",
                "Warranty: 2 years", "Price: $49.99", "SKU: 88231", "Stock: In stock"]),
     "gopher_quality.non_alpha_words"),  # product spec table
    ("\n".join(["Share this:", "Facebook", "Twitter", "Email", "Like this:", "Like Loading...", "Related",
                "3 comments", "Leave a reply"]), "gopher_quality.few_stop_words"),  # share widget
    ("\n".join(["Stocks rally as oil prices fall", "Mayor announces new bike lanes downtown",
                "Local team wins championship game", "Storm expected to hit coast this weekend",
                "New restaurant opens on Main Street", "School board approves budget",
                "Police investigate downtown break-in", "City council delays vote on housing"]),
     "gopher_quality.few_stop_words"),  # headline link list
]


@pytest.mark.parametrize(("text", "reason"), EN_JUNK)
def test_english_web_junk_is_still_dropped(text: str, reason: str):
    cleaned = clean_text(text, CleanConfig())
    assert F.run_filters(cleaned, detect_language(cleaned), F.FiltersConfig()).reason == reason


def test_speaker_labels_short_sentences_and_titles_stay_but_link_text_goes():
    doc = ("Travel plan\nROMEO:\nO, she doth teach the torches to burn bright!\nJULIET:\nAy.\n"
           "Home\nRead more\nShare this:\nFacebook\nIt is the east, and Juliet is the sun, my love.")
    cfg = F.C4Config()
    cfg.en.min_num_sentences = None  # (a short document: the line rule alone is under test)
    out = F.apply_c4(F.DocView(doc, "en"), cfg)
    assert out.text == ("Travel plan\nROMEO:\nO, she doth teach the torches to burn bright!\nJULIET:\nAy.\n"
                        "It is the east, and Juliet is the sun, my love.")
    assert out.lines_removed["too_few_words"] == 4  # Home, Read more, Share this: + Facebook
    assert F.join_speaker_labels(["ROMEO:", "Ay.", "x"]) == ["ROMEO: Ay.", "x"]
    assert F.is_outline(["Contents", "Chapter 1. Results", "Chapter 2. Methods", "Chapter 3. Data"])
    assert not F.is_outline(["Chapter 1. Results", "Chapter 3. Methods", "Chapter 2. Data"])


ZH_ARTICLE = (
    "人工智能是计算机科学的一个重要分支，它研究如何让机器模拟人类的学习、推理和决策过程。\n"
    "近年来，随着计算能力的提升和数据规模的扩大，深度学习在图像识别和自然语言处理等领域取得了显著的进展。"
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\n".join("首页 新闻 体育 娱乐 财经 科技 汽车 房产 教育 旅游 联系我们".split()),
         "gopher_quality.few_stop_words"),
        ("\n".join(f"{1000 + i * 7} {2000 + i * 13} {3000 + i * 17} 元" for i in range(20)),
         "gopher_quality.non_alpha_words"),
        ("\n".join(["点击进入官方网站领取大礼包"] * 5 + ["今日特价商品推荐"] * 5),
         "gopher_repetition.dup_lines"),
        ("\n".join("热门标签 手机 电脑 相机 耳机 平板 手表 音箱 键盘 鼠标 显示器".split()),
         "fineweb.line_punct"),
        # Headlines without punctuation, numbers or pronouns: still a link list to line_punct.
        ("\n".join(["国务院常务会议部署稳就业措施", "多地出台新政支持新能源汽车消费",
                    "央行宣布下调存款准备金率",
                    "全国夏粮小麦收购进度过半", "高校毕业生就业服务月活动启动", "长江流域进入主汛期",
                    "第三届数字经济峰会在杭州开幕", "新版医保药品目录正式实施", "北方地区迎来今夏首轮高温"]),
         "fineweb.line_punct"),
        # Numbered spam: the enumerators are left out of the n-grams, the template still repeats.
        ("\n".join(f"{i}. 北京代开发票 上海代开发票 广州代开发票" for i in range(1, 12)),
         "gopher_repetition.top_2gram"),
        ("\n".join(f"第{i}名 {c}代开发票 联系电话 微信同号" for i, c in enumerate("京沪穗深津渝杭宁", 1)),
         "gopher_repetition.top_3gram"),
    ],
)
def test_chinese_web_junk_is_still_dropped(text: str, reason: str):
    assert detect_language(text) == "zh"
    assert F.run_filters(text, "zh", F.FiltersConfig()).reason == reason


def test_cjk_units_for_lines_and_list_shape():
    # The C4 line rule counts CJK characters: a two-character verse line stays, a line without
    # any letter or digit (a separator, a lone symbol) goes.
    out = F.run_filters(ZH_ARTICLE + "\n何意。\n心摇。\n————————\n|", "zh", F.FiltersConfig())
    assert out.text == ZH_ARTICLE + "\n何意。\n心摇。" and out.c4_lines_removed["too_few_words"] == 2
    assert F.count_units("何意。") == 2 and F.count_units("用 PyTorch 2.1 训练") == 6
    # Newlines per CJK unit: lists of 1-2 character items are list-like, verse is not.
    menu = "\n".join(["首页", "新闻", "体育", "娱乐", "财经", "科技", "汽车", "房产"] * 2)
    rules = F.FineWebConfig()
    rules.zh.line_punct_thr = None  # (a menu has no punctuation either: that rule would fire first)
    assert F.check_fineweb(F.DocView(menu, "zh"), rules) == "fineweb.list_like"
    verse = "浣溪沙　苏轼\n山下兰芽短浸溪，\n松间沙路净无泥。\n何意。\n萧萧暮雨子规啼。"
    assert F.check_fineweb(F.DocView(verse, "zh"), rules) is None


def test_repeated_headers_and_choruses_are_judged_as_lines():
    header = "浣溪沙　苏轼"
    ci = [f"{header}\n{a}\n{b}" for a, b in (("山下兰芽短浸溪，", "松间沙路净无泥。"),
                                           ("谁道人生无再少？", "门前流水尚能西！"),
                                           ("休将白发唱黄鸡。", "萧萧暮雨子规啼。"))]
    doc = "\n\n".join(ci)
    assert F.run_filters(doc, "zh", F.FiltersConfig()).text == doc
    rules = F.FineWebConfig()
    rules.zh.dup_line_min_units = 0  # FineWeb-2's rule: the repeated header is "boilerplate"
    assert F.check_fineweb(F.DocView(doc, "zh"), rules) == "fineweb.dup_line_chars"


def test_choruses_enumerators_and_spoken_lines():
    verse = "\n".join(LYRIC_LINES[:5])
    song = "\n\n".join([verse, "\n".join(CHORUS), "\n".join(LYRIC_LINES[5:10]), "\n".join(CHORUS),
                         "\n".join(CHORUS)])
    assert F.run_filters(song, "zh", F.FiltersConfig()).text == song  # a chorus sung three times
    rules = F.GopherRepetitionConfig()
    rules.zh.dup_line_stanzas = False  # then each repeated chorus line counts: 8 of 23 lines
    assert F.check_gopher_repetition(F.DocView(song, "zh"), rules) == "gopher_repetition.dup_lines"
    # The same lines repeated without stanza breaks are still boilerplate.
    flat = "\n".join([*LYRIC_LINES[:5], *CHORUS * 3])
    assert F.run_filters(flat, "zh", F.FiltersConfig()).reason == "gopher_repetition.dup_lines"
    fw = F.FineWebRules()
    assert not F._closed_line("长江流域进入主汛期", fw)
    zh = F.FineWebConfig().zh
    assert F._closed_line("第三章　模型结构", zh) and F._closed_line("（二）数据准备", zh)
    assert F._closed_line("你说过的话还在耳边", zh) and not F._closed_line("长江流域进入主汛期", zh)
    assert F.ENUMERATOR.sub("", "第12天：上午参观故宫") == "上午参观故宫"


if __name__ == "__main__":
    import sys

    root = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    for genre, (share, why) in survival(build_corpora(root)).items():
        print(f"| {genre} | {share:.0%} | {', '.join(f'{k} {v}' for k, v in why.most_common(3))} |")


def test_genres_survive_data_prepare_in_a_dirty_mix(corpora, shared_data: Path, tmp_path: Path):
    """The user's path: every Chinese genre and the English ones at 90% (KEPT_EN) mixed with web
    text and English and Chinese junk through `data prepare` (cleaning, filters, PII, exact
    dedup, 2 workers): >= its floor (FLOOR) of each genre's texts come out
    unchanged (a text repeated in the synthetic corpus counts once: exact dedup keeps one), and
    the junk does not. MinHash is off: the synthetic prose documents are 2-4 of 16 paragraphs,
    so some are near-duplicates by construction and rightly merged (4 of 60 with it on)."""
    from seekforge.cli import main

    rows = []
    for genre in KEPT + KEPT_EN:
        rows += [{"text": t, "genre": genre} for t in corpora[genre][:60]]
    with open(shared_data / "pretrain" / "c4_demo.jsonl", encoding="utf-8") as f:
        rows += [{"text": json.loads(line)["text"], "genre": "c4"} for _, line in zip(range(60), f)]
    junk = ["\n".join("首页 新闻 体育 娱乐 财经 科技 汽车 房产 教育 旅游 联系我们".split()),
            "\n".join(["点击进入官方网站领取大礼包"] * 5 + ["今日特价商品推荐"] * 5),
            "\n".join(f"{i}. 北京代开发票 上海代开发票 广州代开发票" for i in range(1, 12)),
            *(text for text, _ in EN_JUNK)]
    rows += [{"text": t, "genre": "junk"} for t in junk]
    random.Random(0).shuffle(rows)
    inp = tmp_path / "mix.jsonl"
    inp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["data", "prepare", "--input", str(inp), "--out", str(out), "--workers", "2", "--no-progress",
                 "--set", "output.format=jsonl", "--set", "dedup.minhash=false"]) == 0
    kept = {json.loads(line)["text"] for shard in out.glob("part-*.jsonl")
            for line in shard.read_text(encoding="utf-8").splitlines()}
    for genre in KEPT + KEPT_EN:
        texts = {clean_text(r["text"], CleanConfig()) for r in rows if r["genre"] == genre}
        intact = len(texts & kept)
        assert intact / len(texts) >= FLOOR[genre], (genre, intact, len(texts))
    assert not kept & {clean_text(t, CleanConfig()) for t in junk}
