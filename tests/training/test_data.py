"""Training data: BELLE-style formats -> chat messages, the streamed row index, skip reports, splits."""

import json
import logging
import pickle
import time
import tracemalloc

import numpy as np
import pytest

from belle.app.errors import InputError
from belle.app.templates import ChatMessage
from belle.training.data import RowIndex, SkipReport, index_files, split_rows
from belle.training.formats import FORMATS, Example, RowError, detect_format, to_example


def U(text):
    return ChatMessage("user", text)


def A(text):
    return ChatMessage("assistant", text)


def S(text):
    return ChatMessage("system", text)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# --- formats ---------------------------------------------------------------------------------------


def test_alpaca():
    row = {"instruction": "把这句话翻译成英文", "input": "你好，世界", "output": "Hello, world"}
    assert to_example(row, "alpaca").messages == (U("把这句话翻译成英文\n你好，世界"), A("Hello, world"))
    assert to_example({"instruction": "讲个笑话", "input": "", "output": "好的。"}, "alpaca").messages == (
        U("讲个笑话"), A("好的。"))
    assert to_example({"instruction": "  ", "input": "只有输入", "output": "嗯"}, "alpaca").messages[0] == U("只有输入")
    assert to_example({"instruction": "无输入字段", "input": None, "target": " 目标 "}, "alpaca").messages == (
        U("无输入字段"), A(" 目标 "))  # "target" copies; contents are never stripped
    row = {"system": "你是助手", "history": [["第一问", "第一答"], ["第二问", "第二答"]],
           "instruction": "第三问", "output": "第三答"}
    assert to_example(row, "alpaca").messages == (
        S("你是助手"), U("第一问"), A("第一答"), U("第二问"), A("第二答"), U("第三问"), A("第三答"))
    assert to_example({"system": " ", "instruction": "q", "output": "a"}, "alpaca").messages == (U("q"), A("a"))


def test_multiturn_parser():
    row = {"instruction": "Human:你好\nAssistant:你好！有什么可以帮您？\nHuman:介绍一下北京\nAssistant:",
           "input": "", "output": "北京是中国的首都。"}
    assert to_example(row, "multiturn").messages == (
        U("你好"), A("你好！有什么可以帮您？"), U("介绍一下北京"), A("北京是中国的首都。"))
    # "Human:" inside a line is text, not a turn; one space after the colon is tolerated and dropped.
    row = {"instruction": "Human: 这句话里的 Human: 是什么？\nAssistant: 它只是文字，Human:不会切分。\n第二行\nHuman:好的\r\nAssistant:",
           "output": "明白"}
    assert to_example(row, "multiturn").messages == (
        U("这句话里的 Human: 是什么？"), A("它只是文字，Human:不会切分。\n第二行"), U("好的"), A("明白"))
    # No trailing "Assistant:": output answers the last Human turn; input joins it as in alpaca.
    assert to_example({"instruction": "Human:算一下", "input": "1+1", "output": "2"}, "multiturn").messages == (
        U("算一下\n1+1"), A("2"))
    # A single-turn row without markers in a multi-turn file.
    assert to_example({"instruction": "单轮问题", "output": "单轮回答"}, "multiturn").messages == (U("单轮问题"), A("单轮回答"))
    bad = [
        ({"instruction": "前言\nHuman:问\nAssistant:", "output": "答"}, "text before the first 'Human:'"),
        ({"instruction": "Human:问\nAssistant:答", "output": "又答"}, "instruction ends with an assistant reply"),
        ({"instruction": "Human:问\nHuman:再问\nAssistant:", "output": "答"}, "two user turns in a row"),
        ({"instruction": "Human:\nAssistant:", "output": "答"}, "empty user message"),
    ]
    for row, reason in bad:
        with pytest.raises(RowError) as err:
            to_example(row, "multiturn")
        assert str(err.value) == reason


def test_conversations_messages_tsv_text():
    row = {"id": "1", "conversations": [
        {"from": "system", "value": "你是 BELLE"}, {"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"},
        {"from": "user", "value": "再见"}, {"from": "chatgpt", "value": "再见。"},
        {"from": "Human", "value": "bing?"}, {"from": "bing", "value": "是的"}]}
    assert to_example(row, "conversations").messages == (
        S("你是 BELLE"), U("你好"), A("你好！"), U("再见"), A("再见。"), U("bing?"), A("是的"))
    row = {"system": "顶层系统提示", "conversations": [{"from": "human", "value": "问"}, {"from": "assistant", "value": "答"}]}
    assert to_example(row, "conversations").messages == (S("顶层系统提示"), U("问"), A("答"))
    row = {"messages": [{"role": "system", "content": "简洁回答"}, {"role": "user", "content": "1+1?"},
                        {"role": "assistant", "content": "2"}]}
    assert to_example(row, "messages").messages == (S("简洁回答"), U("1+1?"), A("2"))
    assert to_example("今天天气怎么样\t挺好的 ", "tsv").messages == (U("今天天气怎么样"), A("挺好的 "))
    example = to_example({"text": "继续预训练的一段中文文本。\n"}, "text")
    assert example == Example(text="继续预训练的一段中文文本。\n") and example.messages == ()


def test_detect_format(tmp_path):
    assert detect_format({"instruction": "q", "input": "", "output": "a"}, "x.jsonl") == "alpaca"
    assert detect_format({"instruction": "Human:q\nAssistant:", "output": "a"}, "x.jsonl") == "multiturn"
    assert detect_format({"conversations": []}, "x.json") == "conversations"
    assert detect_format({"messages": []}, "x.jsonl") == "messages"
    assert detect_format({"text": "t"}, "x.jsonl") == "text"
    assert detect_format("q\ta", tmp_path / "x.tsv") == "tsv"
    with pytest.raises(RowError, match="unknown record shape"):
        detect_format({"question": "q"}, "x.jsonl")
    with pytest.raises(RowError, match="not a JSON object"):
        detect_format([1, 2], "x.jsonl")
    assert set(FORMATS) == {"alpaca", "multiturn", "conversations", "messages", "tsv", "text"}


BAD_ROWS = [
    ('{"instruction": "问", "input": "", "output": "答"', "invalid JSON (Expecting ',' delimiter)"),
    ('["不是对象"]', "not a JSON object"),
    ('{"instruction": "问", "input": ""}', "missing field 'output'"),
    ('{"input": "", "output": "答"}', "missing field 'instruction'"),  # the format is the first row's
    ('{"instruction": "", "input": " ", "output": "答"}', "empty instruction"),
    ('{"instruction": "问", "output": "  \\n"}', "empty assistant message"),
    ('{"instruction": 3, "output": "答"}', "'instruction' is not a string"),
    ('{"instruction": "问", "output": "答", "history": "不是列表"}', "'history' is not a list"),
    ('{"conversations": [{"from": "human", "value": "问"}, {"from": "bot", "value": "答"}]}', "unknown role 'bot'"),
    ('{"conversations": [{"from": "human", "value": "问"}, {"from": "human", "value": "又问"}]}', "two user turns in a row"),
    ('{"conversations": [{"from": "human", "value": "问"}]}', "no assistant reply"),
    ('{"conversations": [{"from": "gpt", "value": "你好"}, {"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]}',
     "first turn is from the assistant"),
    ('{"conversations": [{"from": "human", "value": "问"}, {"from": "system", "value": "晚了"}, {"from": "gpt", "value": "答"}]}',
     "system message not first"),
    ('{"conversations": "问答"}', "'conversations' is not a list"),
    ('{"conversations": []}', "no messages"),
    ('{"conversations": [{"from": "human"}]}', "an entry of 'conversations' has no 'value'"),
    ('{"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": null}]}',
     "'content' is not a string"),
    ('{"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}, {"role": "assistant", "content": "又答"}]}',
     "two assistant turns in a row"),
    ('{"messages": [{"role": "tool", "content": "x"}]}', "unknown role 'tool'"),
    ('{"text": 42}', "'text' is not a string"),
    ('{"text": " "}', "empty text"),
]
FIRST_ROW = {
    "alpaca": '{"instruction": "好的问题", "input": "", "output": "好的回答"}',
    "conversations": '{"conversations": [{"from": "human", "value": "问"}, {"from": "gpt", "value": "答"}]}',
    "messages": '{"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}]}',
    "text": '{"text": "一段文字"}',
}


@pytest.mark.parametrize("row, reason", BAD_ROWS, ids=[reason for _, reason in BAD_ROWS])
def test_bad_row_fails_with_file_line_reason(tmp_path, row, reason):
    fmt = next((f for f in ("conversations", "messages", "text") if f'"{f}"' in row), "alpaca")
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{FIRST_ROW[fmt]}\n\n{row}\n{FIRST_ROW[fmt]}\n", encoding="utf-8")  # bad row on line 3
    with pytest.raises(InputError) as err:
        index_files([path], progress=False)
    assert str(err.value) == f"{path}:3: {reason}"


def test_tsv_rows(tmp_path):
    path = tmp_path / "chat.tsv"
    path.write_bytes("你好\t你好呀\r\n\n 吃了吗 \t吃了\n一\t二\t三\n空回答\t \n".encode("utf-8"))
    with pytest.raises(InputError, match=r"chat.tsv:4: expected 1 tab, found 2$"):
        index_files([path], progress=False)
    index, report = index_files([path], on_error="skip", progress=False)
    assert [index[i].messages for i in range(len(index))] == [(U("你好"), A("你好呀")), (U(" 吃了吗 "), A("吃了"))]
    assert report.counts == {"expected 1 tab, found 2": 1, "empty answer": 1}
    assert index[1].source == f"{path}:3"


# --- index_files ---------------------------------------------------------------------------------


def make_mixed_files(tmp_path):
    alpaca = write_jsonl(tmp_path / "train_0.5M_CN.jsonl", [
        {"instruction": "给出三个学习的好方法", "input": "", "output": "1. 制定计划\n2. 多练习\n3. 及时复习"},
        {"instruction": "翻译成英文", "input": "我爱北京", "output": "I love Beijing"},
    ])
    multiturn = write_jsonl(tmp_path / "multiturn_chat_0.8M.jsonl", [
        {"instruction": "Human:你好\nAssistant:你好！\nHuman:今天星期几？\nAssistant:", "input": "", "output": "今天星期三。"},
    ])
    conversations = tmp_path / "train_3.5M_CN.json"
    conversations.write_text(json.dumps([
        {"id": "a", "conversations": [{"from": "human", "value": "写一首诗"}, {"from": "assistant", "value": "春眠不觉晓"}]},
    ], ensure_ascii=False, indent=2), encoding="utf-8")
    messages = write_jsonl(tmp_path / "openai.jsonl", [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 你好！"}]},
    ])
    tsv = tmp_path / "chitchat.txt"
    tsv.write_text("在吗\t在的\n", encoding="utf-8")
    text = write_jsonl(tmp_path / "pretrain.jsonl", [{"text": "长江是中国第一长河。"}])
    return [alpaca, multiturn, conversations, messages, tsv, text]


def test_index_detects_each_file_and_reads_rows_back(tmp_path):
    paths = make_mixed_files(tmp_path)
    index, report = index_files(paths, progress=False)
    assert index.formats == ["alpaca", "multiturn", "conversations", "messages", "tsv", "text"]
    assert len(index) == 7 and report.summary() == "" and report.counts == {}
    assert index.file_ids.tolist() == [0, 0, 1, 2, 3, 4, 5] and index.lines.tolist() == [1, 2, 1, 2, 1, 1, 1]
    rows = list(index)
    assert rows[1] == Example((U("翻译成英文\n我爱北京"), A("I love Beijing")), source=f"{paths[0]}:2")
    assert rows[2].messages == (U("你好"), A("你好！"), U("今天星期几？"), A("今天星期三。"))
    assert rows[3].messages == (U("写一首诗"), A("春眠不觉晓")) and rows[3].source == f"{paths[2]}:2"
    assert rows[4].messages[1] == A("Hello! 你好！")
    assert rows[5].messages == (U("在吗"), A("在的"))
    assert rows[6] == Example(text="长江是中国第一长河。", source=f"{paths[5]}:1")
    assert index[-1] == rows[6] and index[np.int64(3)] == rows[3]
    with pytest.raises(IndexError):
        index[7]
    # Read in any order, again: each row is found by its offset, not by reading on from the last.
    assert [index[i] for i in (6, 0, 3, 0)] == [rows[6], rows[0], rows[3], rows[0]]


def test_fmt_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "looks_multiturn.jsonl", [
        {"instruction": "Human:第一句\nAssistant:", "input": "", "output": "回答"},
    ])
    assert index_files([path], progress=False)[0][0].messages == (U("第一句"), A("回答"))
    index, _ = index_files([path], fmt="alpaca", progress=False)
    assert index.formats == ["alpaca"] and index[0].messages == (U("Human:第一句\nAssistant:"), A("回答"))
    with pytest.raises(InputError, match=r"looks_multiturn.jsonl:1: missing field 'text'"):
        index_files([path], fmt="text", progress=False)
    with pytest.raises(InputError, match="unknown data format 'belle'"):
        index_files([path], fmt="belle", progress=False)
    with pytest.raises(InputError, match="tsv rows need a .tsv or .txt file"):
        index_files([path], fmt="tsv", progress=False)


def test_json_array_line_numbers(tmp_path):
    good = {"instruction": "问题", "input": "", "output": "回答"}
    path = tmp_path / "data.json"
    # Pretty-printed: the first element spans lines 2-6, the second starts on line 7.
    path.write_text(json.dumps([good, {"instruction": "坏的", "input": "", "output": ""}, good], ensure_ascii=False,
                               indent=2), encoding="utf-8")
    assert path.read_text(encoding="utf-8").splitlines()[6].strip() == "{"
    with pytest.raises(InputError) as err:
        index_files([path], progress=False)
    assert str(err.value) == f"{path}:7: empty assistant message"
    index, report = index_files([path], on_error="skip", progress=False)
    assert [row.source for row in index] == [f"{path}:2", f"{path}:12"]
    assert index[1].messages == (U("问题"), A("回答")) and report.first == {"empty assistant message": f"{path}:7"}
    # One object, and objects one after another (JSON Lines saved as .json), with a BOM.
    single = tmp_path / "single.json"
    single.write_bytes(b"\xef\xbb\xbf" + json.dumps(good, ensure_ascii=False).encode("utf-8"))
    assert index_files([single], progress=False)[0][0].source == f"{single}:1"
    several = tmp_path / "several.json"
    several.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [good, {"instruction": "二", "output": "2"}]),
                       encoding="utf-8")
    assert index_files([several], progress=False)[0][1] == Example((U("二"), A("2")), source=f"{several}:2")
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "a" "output": "b"}\n]', encoding="utf-8")
    with pytest.raises(InputError, match=r"broken.json:3: invalid JSON \(Expecting ',' delimiter\)"):
        index_files([broken], on_error="skip", progress=False)  # the rest of an array cannot be found


def test_skip_report(tmp_path, caplog):
    path = tmp_path / "mixed.jsonl"
    lines = [
        '{"instruction": "好", "output": "好"}',
        '{"instruction": "好", "output": ""}',
        "{broken",
        '{"instruction": "好", "output": " "}',
        '{"instruction": "", "output": "答"}',
        '{"instruction": "又好", "output": "又好"}',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="belle.training.data"):
        index, report = index_files([path], on_error="skip", progress=False)
    assert len(index) == 2 and [row.source for row in index] == [f"{path}:1", f"{path}:6"]
    assert report.counts == {"empty assistant message": 2, "invalid JSON (Expecting property name enclosed in double quotes)": 1,
                             "empty instruction": 1}
    assert report.first["empty assistant message"] == f"{path}:2"
    assert report.summary().splitlines() == [
        f"skipped 2 rows: empty assistant message (first at {path}:2)",
        f"skipped 1 row: invalid JSON (Expecting property name enclosed in double quotes) (first at {path}:3)",
        f"skipped 1 row: empty instruction (first at {path}:5)",
    ]
    assert report.summary() in caplog.text  # never silent
    assert SkipReport({}, {}).summary() == ""
    all_bad = tmp_path / "all_bad.jsonl"
    all_bad.write_text("{broken\n[1]\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"all_bad.jsonl: no usable rows \(skipped 1 invalid JSON .*; 1 not a JSON object\)"):
        index_files([path, all_bad], on_error="skip", progress=False)


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match=r"missing.jsonl: no such file"):
        index_files([tmp_path / "missing.jsonl"], progress=False)
    with pytest.raises(InputError, match=r": is a directory"):
        index_files([tmp_path], progress=False)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"empty.jsonl: no usable rows \(empty file\)"):
        index_files([empty], progress=False)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"latin.jsonl:2: not UTF-8 text at byte 28$"):
        index_files([latin], on_error="skip", progress=False)
    latin_json = tmp_path / "latin.json"
    latin_json.write_bytes(b'[\n{"text": "caf\xe9"}]')
    with pytest.raises(InputError, match=r"latin.json:2: not UTF-8 text at byte 15$"):
        index_files([latin_json], progress=False)
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match="unknown data file type"):
        index_files([csv], progress=False)
    with pytest.raises(InputError, match="unknown on_error"):
        index_files([empty], on_error="ignore", progress=False)


def test_dedup(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [
        {"instruction": "你好", "input": "", "output": "你好！"},
        {"instruction": "你好", "input": "", "output": "您好！"},
        {"instruction": "你好", "input": "", "output": "你好！"},
    ])
    b = write_jsonl(tmp_path / "b.jsonl", [
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]},  # same messages
        {"messages": [{"role": "user", "content": "你好 "}, {"role": "assistant", "content": "你好！"}]},  # not the same
    ])
    index, report = index_files([a, b], progress=False)
    assert len(index) == 5 and report.duplicates == 0
    index, report = index_files([a, b], dedup=True, progress=False)
    assert [row.source for row in index] == [f"{a}:1", f"{a}:2", f"{b}:2"]
    assert report.duplicates == 2 and report.summary() == "dropped 2 duplicate rows"


def test_split_rows(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"第{i}行"} for i in range(100)])
    index, _ = index_files([path], progress=False)
    train, evaluation = split_rows(index)
    assert evaluation is None and len(train) == 100 and sorted(train.lines.tolist()) == list(range(1, 101))
    train, evaluation = split_rows(index, eval_fraction=0.1, seed=3)
    assert (len(train), len(evaluation)) == (90, 10)
    assert sorted(train.lines.tolist() + evaluation.lines.tolist()) == list(range(1, 101))
    again = split_rows(index, eval_fraction=0.1, seed=3)
    assert np.array_equal(again[0].lines, train.lines) and np.array_equal(again[1].lines, evaluation.lines)
    assert not np.array_equal(split_rows(index, eval_fraction=0.1, seed=4)[1].lines, evaluation.lines)
    assert train.lines.tolist() != sorted(train.lines.tolist())  # shuffled
    assert len(split_rows(index, eval_fraction=0.001)[1]) == 1  # at least one
    train, evaluation = split_rows(index, eval_rows=7, shuffle=False)
    assert train.lines.tolist() == list(range(1, 94)) and evaluation.lines.tolist() == list(range(94, 101))
    assert evaluation[0] == Example(text="第93行", source=f"{path}:94")
    with pytest.raises(InputError, match="100 eval rows leave no training rows"):
        split_rows(index, eval_rows=100)
    with pytest.raises(InputError, match="eval fraction"):
        split_rows(index, eval_fraction=1.5)


def test_index_pickles_without_open_files(tmp_path):
    paths = make_mixed_files(tmp_path)
    index, _ = index_files(paths, progress=False)
    rows = list(index)  # opens every file in this process
    assert index._open
    copy = pickle.loads(pickle.dumps(index))  # a file object would not pickle
    assert copy._open == {} and list(copy) == rows
    subset = copy.subset(np.array([6, 1]))
    assert isinstance(subset, RowIndex) and [row.source for row in subset] == [rows[6].source, rows[1].source]


def test_changed_file_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "一"}, {"text": "二"}])
    index, _ = index_files([path], progress=False)
    write_jsonl(path, [{"text": "一"}, {"text": "二"}, {"text": "三"}])
    with pytest.raises(InputError, match="changed after it was indexed"):
        index[1]


def test_big_file_is_streamed(tmp_path):
    """200k rows: the index costs ~16 bytes a row, never the file's size (BELLE's files are GBs)."""
    path = tmp_path / "big.jsonl"
    line = json.dumps({"text": "第@行：" + "用于继续预训练的中文文本，" * 8}, ensure_ascii=False) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(line.replace("@", str(i)) for i in range(200_000))
    size = path.stat().st_size
    assert size > 50_000_000
    tracemalloc.start()
    start = time.perf_counter()
    try:
        index, report = index_files([path], progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(index) == 200_000 and report.counts == {}
    assert peak < size / 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
    assert index[123_456] == Example(text=json.loads(line.replace("@", "123456"))["text"], source=f"{path}:123457")
    print(f"indexed {size / 1e6:.0f} MB in {time.perf_counter() - start:.1f} s, peak {peak / 1e6:.1f} MB traced")
