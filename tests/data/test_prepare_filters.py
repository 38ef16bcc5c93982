"""Cleaning, language ID and the language-aware quality filters on English AND Chinese text."""

from __future__ import annotations

import random

import pytest

from seekforge.data import filters as F
from seekforge.data.clean import CleanConfig, clean_text
from seekforge.data.text import count_sentences, detect_language, ends_with_terminal

EN_CLEAN = (
    "The history of the printing press is closely tied to the spread of literacy in Europe. "
    "Before movable type, books were copied by hand, which made them rare and expensive.\n"
    "Johannes Gutenberg combined several existing technologies into a system that could produce "
    "pages quickly and with consistent quality. Within a few decades, printing shops had opened "
    "in most large cities.\n"
    "Historians still debate how much the new technology changed the way people thought, but it "
    "is clear that ideas began to travel faster than ever before. That change had effects on "
    "religion, science and politics that lasted for centuries."
)
ZH_CLEAN = (
    "人工智能是计算机科学的一个重要分支，它研究如何让机器模拟人类的学习、推理和决策过程。"
    "近年来，随着计算能力的提升和数据规模的扩大，深度学习在图像识别和自然语言处理等领域取得了显著的进展。\n"
    "大语言模型是其中最受关注的方向之一。研究人员先在海量文本上进行预训练，让模型学会语言的基本规律，"
    "然后再通过指令微调和人类反馈，使模型能够更好地理解用户的意图。\n"
    "不过，训练一个高质量的模型并不容易。数据的质量往往比数据的数量更加重要，重复的网页、广告和乱码都会影响模型的效果，"
    "因此在训练之前必须对数据进行仔细的清洗和过滤。"
)
ZH_POEM = "床前明月光，疑是地上霜。\n舉頭望明月，低頭思故鄉。"


def run(text: str, cfg: F.FiltersConfig | None = None) -> F.FilterOutcome:
    return F.run_filters(text, detect_language(text), cfg or F.FiltersConfig())


# --------------------------------------------------------------------------- cleaning


def test_clean_keeps_chinese_punctuation_but_fixes_width_html_mojibake():
    c = CleanConfig()
    assert clean_text("中文，标点！（保留）“引号”", c) == "中文，标点！（保留）“引号”"
    assert clean_text("Ｈｅｌｌｏ１２３ ﬁne", c) == "Hello123 fine"
    assert clean_text("cafÃ© and ä¸­æ–‡", c) == "café and 中文"
    html = "<html><style>p{x:1}</style><p>Hello&nbsp;&amp; bye</p><script>x()</script>&lt;b&gt;</html>"
    assert clean_text(html, c) == "Hello & bye\n<b>"
    assert clean_text("a  b\t c \r\nnext\x07\u200b\n\n\n\nlast  ", c) == "a b c\nnext\n\nlast"
    assert clean_text("　　段落缩进", c) == "段落缩进"
    assert clean_text("def f():\n    return 1", c) == "def f():\n    return 1"  # indentation kept
    # plain NFKC would turn Chinese full-width punctuation into ASCII:
    assert clean_text("你好，世界！", CleanConfig(normalization="nfkc")) == "你好,世界!"


def test_language_detection():
    assert detect_language(EN_CLEAN) == "en"
    assert detect_language(ZH_CLEAN) == "zh"
    assert detect_language(ZH_POEM) == "zh"
    assert detect_language("我们用 PyTorch 和 CUDA 训练 Transformer 模型") == "zh"
    assert detect_language("これは日本語の文章です。漢字も使います。") == "ja"
    assert detect_language("Le chat est sur la table et il dort depuis ce matin avec son ami.") == "other"
    assert detect_language("12345 678") == "other"


def test_terminal_punctuation_and_sentences_are_cjk_aware():
    for line in ("完了。", "真的吗？", "太好了！", "他说：「走吧。」", "然后……", "He left.", '"No."'):
        assert ends_with_terminal(line), line
    for line in ("Read more...", "未完…", "标题", "Click here"):
        assert not ends_with_terminal(line), line
    assert count_sentences("第一句。第二句！第三句？") == 3
    assert count_sentences("One. Two? Three") == 3


# --------------------------------------------------------------------------- clean docs pass


def test_clean_english_and_chinese_documents_pass():
    assert run(EN_CLEAN).reason is None
    out = run(ZH_CLEAN)
    assert out.reason is None and out.text == ZH_CLEAN


def test_short_classical_chinese_is_not_dropped_for_too_few_words():
    # Whitespace counting sees 2 "words" here; jieba sees ~20 and character-level function
    # words find 是/明/地... (a quatrain must survive the default rules).
    assert run(ZH_POEM).reason is None
    assert len(ZH_POEM.split()) == 2
    assert len([w for w in F.DocView(ZH_POEM, "zh").words if w not in "，。"]) >= 10


# --------------------------------------------------------------------------- junk: dropped, right reason


def _varied_english(n_lines: int, hashtags: bool = False) -> str:
    """Non-repetitive English lines (so that only the rule under test can fire)."""
    rng = random.Random(n_lines)
    vocab = str.split("river mountain city village teacher student garden window market winter summer "
             "morning evening kitchen library doctor engine harbor forest island bridge castle "
             "letter journey silver copper valley desert ocean planet signal")
    lines = []
    for i in range(n_lines):
        words = rng.sample(vocab, 6)
        tags = f" #{words[4]}{i} #{words[5]}" if hashtags else ""
        lines.append(f"The {words[0]} and the {words[1]} met a {words[2]} near {words[3]} {i}{tags}.")
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("text", "lang", "reason"),
    [
        ("Buy now.", "en", "length.too_short"),
        ("Short note about the weather today, it is nice.", "en", "gopher_quality.too_few_words"),
        (" ".join(["supercalifragilisticexpialidociousness"] * 60), "en", "gopher_repetition.top_2gram"),
        (_varied_english(20, hashtags=True), "en", "gopher_quality.hash_symbols"),
        (" ".join(str(1000 + 7 * i) for i in range(80)) + " the cat and the dog", "en",
         "gopher_quality.non_alpha_words"),
        (" ".join(f"word{i} text{i}x" for i in range(40)), "en", "gopher_quality.few_stop_words"),
        ("\n".join(["Subscribe to our newsletter for the latest news and offers."] * 10), "en",
         "gopher_repetition.dup_lines"),
        (EN_CLEAN + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "en", "c4.lorem_ipsum"),
        (EN_CLEAN + "\nvar config = { debug: true, level: 3 };", "en", "c4.curly_bracket"),
    ],
)
def test_english_junk_dropped_for_the_right_reason(text, lang, reason):
    assert F.run_filters(text, lang, F.FiltersConfig()).reason == reason


ZH_NOUNS = ("魅族 小米 苹果 三星 手机 电脑 平板 耳机 手表 相机 音箱 网关 充电器 键盘 鼠标 显示器 冰箱 空调 "
            "洗衣机 电视 微波炉 烤箱 吸尘器 风扇 台灯 插座 数据线 移动电源 硬盘 内存 显卡 主板 机箱 散热器 "
            "摄像头 麦克风 投影仪 打印机 扫描仪")
ZH_HEADLINES = "\n".join([
    "北京今年的房价出现了明显变化", "专家解读新能源汽车的发展前景", "春节假期旅游市场迎来消费高峰",
    "教育部发布关于中小学课后服务的通知", "全国多地气温创下历史同期新高", "科技公司加快人工智能芯片研发",
    "年轻人为何越来越喜欢露营", "多家银行下调存款利率", "世界杯预选赛中国队主场迎战对手",
    "中医养生的十个常见误区",
])


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("点击这里。", "length.too_short"),
        ("点击这里下载最新版本的软件。", "gopher_quality.too_few_words"),
        ("手机 价格 报价 图片 参数 评测 " * 8, "gopher_repetition.top_3gram"),
        ("\n".join(["欢迎访问本站，本站提供最新的资讯和服务。"] * 8), "gopher_repetition.dup_lines"),
        (ZH_NOUNS, "gopher_quality.few_stop_words"),
        (ZH_HEADLINES, "fineweb.line_punct"),
    ],
)
def test_chinese_junk_dropped_for_the_right_reason(text, reason):
    assert detect_language(text) == "zh"
    assert run(text).reason == reason


def test_clean_chinese_text_would_fail_english_rules():
    """The point of the zh tables: English thresholds/whitespace words reject clean Chinese."""
    assert F.run_filters(ZH_CLEAN, "en", F.FiltersConfig()).reason is not None
    assert F.run_filters(ZH_CLEAN, "zh", F.FiltersConfig()).reason is None


def test_c4_terminal_punctuation_rule_accepts_chinese_lines_when_enabled():
    cfg = F.FiltersConfig()
    cfg.c4.zh.filter_no_terminal_punct = True
    cfg.c4.en.filter_no_terminal_punct = True
    out = run(ZH_CLEAN + "\n相关阅读", cfg)
    assert out.reason is None and out.text == ZH_CLEAN  # the unterminated trailing line is removed
    assert out.c4_lines_removed["no_terminal_punct"] == 1
    assert run(EN_CLEAN + "\nShare this page", cfg).text == EN_CLEAN


def test_c4_removes_policy_and_javascript_lines_in_both_languages():
    out = run(ZH_CLEAN + "\n本网站使用cookie，继续浏览即表示您同意我们的隐私政策。")
    assert out.text == ZH_CLEAN and out.c4_lines_removed["policy"] == 1
    out = run(EN_CLEAN + "\nPlease enable JavaScript in your browser to see this page.")
    assert out.text == EN_CLEAN and out.c4_lines_removed["javascript"] == 1


def test_c4_sentence_minimum_applies_to_english_only_by_default():
    en = "This is a long line with many words in it but only one sentence and no end"
    assert F.apply_c4(F.DocView(en, "en"), F.C4Config()).reason == "c4.too_few_sentences"
    assert F.apply_c4(F.DocView(ZH_POEM, "zh"), F.C4Config()).reason is None


def test_fineweb_rules():
    listy = "\n".join(f"Item number {i} in the list" for i in range(60))
    assert F.check_fineweb(F.DocView(listy, "en"), F.FineWebConfig()) == "fineweb.line_punct"
    short = "\n".join(f"Short line {i}." for i in range(50))
    assert F.check_fineweb(F.DocView(short, "en"), F.FineWebConfig()) == "fineweb.short_lines"
    # short Chinese lines are normal (verse, dialogue): the rule is off for zh (FineWeb-2)
    assert F.check_fineweb(F.DocView(ZH_POEM, "zh"), F.FineWebConfig()) is None


def test_every_filter_can_be_switched_off():
    cfg = F.FiltersConfig()
    for name in ("length", "gopher_repetition", "gopher_quality", "c4", "fineweb"):
        getattr(cfg, name).enabled = False
    assert F.run_filters("x", "en", cfg).reason is None


def test_ngram_repetition_matches_datatrove_on_random_texts():
    """Our vectorised counts vs datatrove's reference implementation: top n-grams exactly,
    repeated n-grams within 10% of the text (we count the union of repeated windows, datatrove
    skips greedily after each repeat; both count each character once)."""
    from datatrove.pipeline.filters import gopher_repetition_filter as gr

    rng = random.Random(0)
    for trial in range(40):
        vocab = [f"w{i}" * rng.randint(1, 3) for i in range(rng.randint(3, 30))]
        words = [rng.choice(vocab) for _ in range(rng.randint(20, 600))]
        if trial % 2:
            words += words[: rng.randint(10, 200)]
        top, dup = F.ngram_repetition(words, sep_len=1)
        for n in (2, 3, 4):
            ref = gr.find_top_duplicate(gr.get_n_grams(words, n))
            counts = {}
            for g in gr.get_n_grams(words, n):
                counts[g] = counts.get(g, 0) + 1
            expect = ref if max(counts.values()) >= 2 else 0  # we do not count a single occurrence
            assert top[n] == expect
        for n in (5, 10):
            ref = gr.find_all_duplicate(words, n)
            total = sum(map(len, words))
            assert abs(dup[n] - ref) <= 0.1 * total + 10, (n, dup[n], ref)


def test_small_and_large_ngram_paths_agree():
    rng = random.Random(1)
    for _ in range(50):
        words = [rng.choice("abcdef") * rng.randint(1, 2) for _ in range(rng.randint(2, 300))]
        small = F._ngram_repetition_small(words, 0)
        old, F._SMALL_DOC_WORDS = F._SMALL_DOC_WORDS, 0
        try:
            assert F.ngram_repetition(words, 0) == small
        finally:
            F._SMALL_DOC_WORDS = old


def test_fasttext_option_fails_clearly(tmp_path):
    from seekforge.data.text import LanguageIdentifier

    with pytest.raises(FileNotFoundError, match="lid.176"):
        LanguageIdentifier(str(tmp_path / "missing.bin"))
    model = tmp_path / "lid.176.bin"
    model.write_bytes(b"x")
    try:
        import fasttext  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="pip install fasttext"):
            LanguageIdentifier(str(model))
    assert LanguageIdentifier()("你好，世界。今天天气很好。") == "zh"
