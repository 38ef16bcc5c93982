"""A small curated offline synonym table for EDA (English and Chinese).

Why a hand-written table: EDA's synonym replacement and random insertion need synonyms, Wei & Zou
used WordNet, and neither WordNet's data (nltk downloads it separately) nor a Chinese thesaurus
(HIT Cilin, Synonyms) ships with seekforge's dependencies. So seekforge carries a compact list of
common, interchangeable words written for this purpose, and users with a bigger thesaurus pass
it with ``--synonyms FILE`` (one group per line, words separated by spaces or commas).

Each group lists words that can replace each other in most contexts. Words in several senses
("right": correct / direction) are left out on purpose: a wrong-sense swap changes meaning.
"""

from __future__ import annotations

EN_GROUPS = """
big large huge enormous
small little tiny
fast quick rapid swift
slow sluggish unhurried
good fine great excellent
bad poor awful terrible
happy glad cheerful joyful
sad unhappy sorrowful gloomy
smart clever intelligent bright
easy simple effortless
hard difficult tough
begin start commence
end finish conclude complete
help assist aid support
show display present demonstrate
make create build produce
use utilize employ apply
get obtain acquire gain
give provide offer supply
buy purchase acquire
choose select pick
answer reply respond
ask inquire query
explain describe clarify
think believe consider
need require
want desire wish
try attempt endeavor
keep retain maintain preserve
change alter modify adjust
improve enhance better
increase raise boost grow
decrease reduce lower cut
important significant crucial essential key
main primary principal chief
common usual ordinary typical
rare uncommon unusual scarce
new novel fresh recent
old ancient aged elderly
strong powerful mighty sturdy
weak feeble frail
rich wealthy affluent
beautiful pretty lovely attractive
ugly unattractive unsightly
quiet silent calm still
loud noisy
clean tidy neat
dirty filthy messy
often frequently regularly
sometimes occasionally
always constantly invariably
quickly rapidly swiftly fast
slowly gradually
carefully cautiously attentively
really truly genuinely
very extremely highly
almost nearly practically
also too additionally
however nevertheless nonetheless
therefore thus hence consequently
because since
story tale narrative
idea concept notion thought
problem issue difficulty trouble
method approach technique way
result outcome consequence
goal aim objective target
task job assignment duty
example instance illustration
question query
mistake error fault
part portion section piece
area region zone
way path route
car automobile vehicle
house home residence dwelling
job occupation profession career
kid child youngster
friend companion pal
people persons individuals folks
city town
world globe earth
picture image photo
text passage writing
book volume
movie film
food meal
trip journey voyage
gift present
speak talk converse
say state mention remark
look see observe view watch
walk stroll wander
run sprint dash
jump leap hop
eat consume devour
laugh chuckle giggle
shout yell scream
fix repair mend
break smash shatter
hide conceal
find discover locate
learn study
teach instruct educate
write compose draft
read peruse
allow permit let
stop halt cease
continue proceed carry
protect guard defend shield
destroy ruin wreck
correct accurate exact precise
wrong incorrect mistaken
whole entire complete
enough sufficient adequate
useful helpful handy
possible feasible
certain sure
angry mad furious irate
afraid scared frightened fearful
tired exhausted weary
brave courageous bold fearless
honest truthful sincere
famous renowned celebrated well-known
strange odd weird peculiar
funny amusing humorous
interesting fascinating intriguing
boring dull tedious
"""

ZH_GROUPS = """
大 巨大 庞大
小 微小 细小
快 迅速 快速 飞快
慢 缓慢 迟缓
好 良好 优秀 出色
坏 糟糕 差劲
高兴 开心 快乐 愉快
难过 伤心 悲伤 难受
聪明 机灵 智慧
容易 简单 轻松
困难 艰难 不易
开始 启动 着手
结束 完成 终止
帮助 协助 援助 帮忙
展示 显示 呈现 展现
制作 创建 构建 建立
使用 利用 运用 采用
获得 取得 得到 获取
提供 给予 供给
购买 采购 买入
选择 挑选 选取
回答 答复 回复 应答
询问 提问 打听
解释 说明 阐述 解说
认为 觉得 以为
需要 需求 要求
希望 期望 盼望 期待
尝试 试图 设法
保持 维持 保留
改变 变化 更改 调整
改进 改善 提高 提升
增加 增长 增多 提升
减少 降低 缩减 下降
重要 关键 主要 要紧
常见 普通 一般 平常
罕见 稀有 少见
新 新颖 崭新
旧 陈旧 古老
强大 强壮 有力 坚强
虚弱 软弱 脆弱
美丽 漂亮 好看 秀丽
安静 宁静 平静 寂静
干净 整洁 清洁
经常 常常 时常 往往
有时 偶尔 间或
总是 一直 始终 向来
仔细 认真 细心 用心
非常 十分 特别 极其 很
几乎 差不多 将近
也 同样 亦
但是 可是 然而 不过
所以 因此 因而 于是
因为 由于
故事 叙述 传说
想法 观点 看法 念头
问题 难题 困难
方法 办法 方式 途径
结果 成果 后果
目标 目的 宗旨
任务 工作 职责
例子 例如 实例 示例
错误 失误 差错
部分 局部 一部分
地区 区域 地带
汽车 轿车 车辆
房子 房屋 住宅
孩子 儿童 小孩
朋友 友人 伙伴
人们 大家 众人
城市 都市 城镇
世界 全球 天下
图片 图像 照片
文章 文本 篇章
书 书籍 图书
电影 影片
食物 食品 饭菜
旅行 旅游 游览
礼物 礼品
说 讲 表示 谈
看 观看 观察 瞧
走 行走 步行
跑 奔跑 跑步
吃 食用 进食
笑 欢笑 微笑
修理 修复 维修
发现 找到 发觉
学习 研习 学
教 教导 传授 指导
写 书写 撰写 编写
读 阅读 朗读
允许 准许 容许 许可
停止 停下 中止
继续 持续 接着
保护 守护 维护 爱护
破坏 毁坏 损坏
正确 准确 精确 对
完整 全部 整个 完全
足够 充足 充分
有用 有益 实用
可能 也许 或许 大概
确定 肯定 一定
生气 愤怒 恼火
害怕 恐惧 畏惧
累 疲劳 疲惫 疲倦
勇敢 英勇 无畏
诚实 真诚 老实
著名 有名 知名 闻名
奇怪 古怪 奇异
有趣 好玩 有意思
无聊 乏味 枯燥
美好 美妙 美满
马上 立刻 立即 随即
现在 目前 如今 当前
以前 过去 从前 之前
以后 将来 今后 未来
特点 特征 特色
能力 本领 本事
机会 时机 机遇
发展 发达 进步
研究 探究 钻研
理解 了解 明白 懂得
记得 记住 牢记
忘记 遗忘 忘掉
喜欢 喜爱 爱好 热爱
讨厌 厌恶 反感
美食 佳肴
老师 教师 导师
学生 学员
医生 大夫 医师
"""


def parse_groups(text: str) -> dict[str, list[str]]:
    """word -> the other words of every group it is in (a group: one line, words separated by
    spaces or commas; lines starting with # are comments)."""
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        words = [w for w in line.replace(",", " ").replace("，", " ").split() if w]
        for w in words:
            others = table.setdefault(w, [])
            others += [o for o in words if o != w and o not in others]
    return table


def builtin_synonyms(lang: str) -> dict[str, list[str]]:
    return parse_groups(ZH_GROUPS if lang == "zh" else EN_GROUPS)
