"""Calibration / evaluation text: plain text and the training data formats, and llama.cpp chunking."""

import json

import pytest

from belle.app.errors import InputError
from belle.quantize.textdata import DEFAULT_CALIBRATION, DEFAULT_EVAL, asset_path, chunk_tokens, load_text


def test_training_formats(tmp_path):
    records = [
        {"instruction": "把这句话翻译成英文", "input": "你好", "output": "Hello"},
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "assistant", "value": "你好！"}]},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"text": "plain record"},
    ]
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n", encoding="utf-8")
    as_json = tmp_path / "d.json"
    as_json.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    expected = "把这句话翻译成英文\n你好\nHello\n\nHi\n你好！\n\n2+2?\n4\n\nplain record"
    assert load_text(jsonl) == expected == load_text(as_json)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"question": "no text field"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl:2: no text field"):
        load_text(bad)
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match="latin1.txt: not UTF-8"):
        load_text(latin)


def test_chunking_like_llama_cpp():
    tokens = list(range(10, 35))  # 25 tokens
    assert chunk_tokens(tokens, 8, None) == [tokens[0:8], tokens[8:16], tokens[16:24]]  # partial tail dropped
    assert chunk_tokens(tokens, 8, 1, max_chunks=2) == [[1] + tokens[1:8], [1] + tokens[9:16]]
    assert chunk_tokens(tokens[:7], 8, None) == []


def test_shipped_texts_are_separate_and_bilingual():
    cal = load_text(asset_path(DEFAULT_CALIBRATION))
    ev = load_text(asset_path(DEFAULT_EVAL))
    for text in (cal, ev):
        assert sum("\u4e00" <= c <= "\u9fff" for c in text) > 1000 and len(text.split()) > 800
    cal_lines = {line.strip() for line in cal.splitlines() if len(line.strip()) > 30}
    assert not cal_lines & {line.strip() for line in ev.splitlines()}  # no shared sentence or paragraph
