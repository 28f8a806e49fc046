"""Tokenizer metadata for GGUF: SentencePiece (`tokenizer.model`) or BPE (`tokenizer.json`).

llama.cpp re-implements both tokenizers, so the GGUF must carry the vocabulary, scores or merges,
token types, special ids, add-BOS flags and the pre-tokenizer name (`tokenizer.ggml.pre`) that
selects llama.cpp's split regexes. See constants.PRE_TOKENIZERS for how the name is chosen.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from gguf import GGUFWriter, SpecialVocab, TokenType

from belle.app.errors import ModelFileError

from .constants import CHAT_TEMPLATES, PRE_TOKENIZERS, SENTENCEPIECE_PRE

log = logging.getLogger(__name__)


@dataclass
class VocabInfo:
    model: str  # tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str  # tokenizer.ggml.pre
    tokens: list[bytes]
    toktypes: list[int]
    scores: list[float] | None = None
    add_space_prefix: bool | None = None


def looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<s>", "</s>", "<unk>", "<pad>", "<mask>")


def _tokenizer_config(model_dir: Path) -> dict:
    path = model_dir / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_sentencepiece(model_dir: Path, n_vocab: int) -> VocabInfo:
    from sentencepiece import SentencePieceProcessor

    path = model_dir / "tokenizer.model"
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(path))
    except (OSError, RuntimeError) as err:
        raise ModelFileError(f"{path}: not a SentencePiece model ({err})") from None
    if sp.vocab_size() > n_vocab:
        raise ModelFileError(f"{path}: {sp.vocab_size()} tokens but config.json vocab_size is {n_vocab}")
    # ids the SentencePiece model does not cover (padding to vocab_size) are unused
    tokens = [f"[PAD{i}]".encode() for i in range(n_vocab)]
    scores = [-10000.0] * n_vocab
    toktypes = [int(TokenType.UNUSED)] * n_vocab
    for i in range(sp.vocab_size()):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        toktypes[i] = int(
            TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
            else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i) else TokenType.NORMAL)
    # tokens added on top of the SentencePiece model (e.g. Chinese-LLaMA's extra special tokens)
    added: dict[int, tuple[str, bool]] = {}
    added_file = model_dir / "added_tokens.json"
    if added_file.is_file():
        for content, tid in json.loads(added_file.read_text(encoding="utf-8")).items():
            added[int(tid)] = (content, looks_special(content))
    for tid, data in _tokenizer_config(model_dir).get("added_tokens_decoder", {}).items():
        added[int(tid)] = (data["content"], bool(data.get("special")) or looks_special(data["content"]))
    for tid, (content, special) in added.items():
        if tid >= n_vocab:
            log.warning("added token %r has id %d beyond vocab_size %d; skipped", content, tid, n_vocab)
            continue
        if tokens[tid] == content.encode() and toktypes[tid] != TokenType.UNUSED:
            continue  # already a piece of the model (<s>, </s>, <unk>)
        tokens[tid] = content.encode("utf-8")
        scores[tid] = -1000.0
        toktypes[tid] = int(TokenType.CONTROL if special else TokenType.USER_DEFINED)
    cfg = _tokenizer_config(model_dir)
    return VocabInfo("llama", SENTENCEPIECE_PRE, tokens, toktypes, scores, cfg.get("add_prefix_space"))


def _pre_signature(pre: dict | None) -> tuple[str, ...]:
    if not pre:
        return ()
    if pre.get("type") == "Sequence":
        return tuple(s for p in pre["pretokenizers"] for s in _pre_signature(p))
    kind = pre.get("type")
    if kind == "ByteLevel":
        return ("<bytelevel>" if pre.get("use_regex", True) else "<bytelevel-noregex>",)
    if kind == "Digits":
        return ("<digits>",)
    if kind == "Split":
        pattern = pre.get("pattern", {})
        return (pattern.get("Regex") or pattern.get("String") or "?",)
    return (f"<{kind}>",)


def detect_pre(tokenizer_json: dict, path: Path) -> str:
    signature = _pre_signature(tokenizer_json.get("pre_tokenizer"))
    if signature not in PRE_TOKENIZERS:
        raise ModelFileError(
            f"{path}: pre-tokenizer {signature} does not match any llama.cpp pre-tokenizer we know "
            f"({', '.join(sorted(set(PRE_TOKENIZERS.values())))}); pass --pre NAME if you know which it is")
    return PRE_TOKENIZERS[signature]


def read_bpe(model_dir: Path, n_vocab: int, pre: str | None = None) -> VocabInfo:
    path = model_dir / "tokenizer.json"
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{path}: cannot read ({err})") from None
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise ModelFileError(f"{path}: tokenizer model type {model.get('type')!r} is not supported (BPE only)")
    reverse = {tid: t for t, tid in model["vocab"].items()}
    added = {a["id"]: a for a in tok.get("added_tokens", [])}
    biggest = max([*reverse, *added], default=-1)
    if biggest >= n_vocab:
        raise ModelFileError(f"{path}: token id {biggest} but config.json vocab_size is {n_vocab}")
    tokens: list[bytes] = []
    toktypes: list[int] = []
    for i in range(n_vocab):
        if i in added:
            tokens.append(added[i]["content"].encode("utf-8"))
            special = added[i].get("special") or looks_special(added[i]["content"])
            toktypes.append(int(TokenType.CONTROL if special else TokenType.USER_DEFINED))
        elif i in reverse:
            tokens.append(reverse[i].encode("utf-8"))
            toktypes.append(int(TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]".encode())
            toktypes.append(int(TokenType.UNUSED))
    return VocabInfo("gpt2", pre or detect_pre(tok, path), tokens, toktypes)


def read_vocab(model_dir: Path, n_vocab: int, prefer_sentencepiece: bool, pre: str | None = None) -> VocabInfo:
    model_dir = Path(model_dir)
    if prefer_sentencepiece and (model_dir / "tokenizer.model").is_file():
        return read_sentencepiece(model_dir, n_vocab)
    if (model_dir / "tokenizer.json").is_file():
        return read_bpe(model_dir, n_vocab, pre)
    wanted = "tokenizer.model or tokenizer.json" if prefer_sentencepiece else "tokenizer.json"
    raise ModelFileError(f"{model_dir}: missing tokenizer ({wanted})")


def resolve_chat_template(spec: str) -> str:
    """A template given by the user: a name in CHAT_TEMPLATES or a path to a .jinja file."""
    if spec in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[spec]
    path = Path(spec)
    if not path.is_file():
        raise ModelFileError(f"chat template {spec!r}: neither a known name ({', '.join(CHAT_TEMPLATES)}) nor a file")
    return path.read_text(encoding="utf-8")


def default_chat_template(model_dir: Path, config: dict) -> str | None:
    """The template for a model that ships none: BELLE's for BELLE models (by name), else none."""
    names = f"{model_dir.resolve().name} {config.get('_name_or_path', '')} {config.get('_model_name_or_path', '')}"
    if "belle" in names.lower():
        return CHAT_TEMPLATES["belle"]
    return None


def write_vocab(writer: GGUFWriter, model_dir: Path, info: VocabInfo,
                chat_template: str | None = None, fallback_template: str | None = None) -> None:
    """Write the vocabulary and SpecialVocab (merges, special ids, add-BOS/EOS, chat template).

    chat_template replaces the model's own; fallback_template is used only if the model has none.
    """
    writer.add_tokenizer_model(info.model)
    writer.add_tokenizer_pre(info.pre)
    writer.add_token_list(info.tokens)
    if info.scores is not None:
        writer.add_token_scores(info.scores)
    writer.add_token_types(info.toktypes)
    if info.add_space_prefix is not None:
        writer.add_add_space_prefix(info.add_space_prefix)
    special = SpecialVocab(model_dir, load_merges=info.model == "gpt2", n_vocab=len(info.tokens))
    if chat_template is not None:
        special.chat_template = chat_template
    elif special.chat_template is None:
        special.chat_template = fallback_template
    # Say explicitly whether BOS is added, so llama.cpp does not guess: Hugging Face adds it only if
    # the tokenizer says so; SentencePiece LLaMA tokenizers add it by default.
    special.add_special_token.setdefault("bos", info.model == "llama")
    special.add_to_gguf(writer, quiet=True)
