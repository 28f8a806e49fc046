"""The chat engine: one loaded llama.cpp model, streaming replies to a conversation.

Design points (measured on a 2-core machine with SmolLM2-135M and a 7B-shaped Q4_0):
- llama.cpp reuses the KV cache for the longest common token prefix, so consecutive turns only
  evaluate the new tokens, as long as the Llama object lives on and earlier turns render to the
  same tokens. We keep one Llama per loaded model and tokenize deterministically.
- use_mmap=False on CPU: with mmap the CPU backend repacks weights into a second copy while the
  mapped pages stay resident (7B Q4_0: 8.5 GB peak vs 4.9 GB, same speed).
- On a phone (device.is_phone) settings left unset take the phone's values instead: few threads,
  a small batch, mmap on (see device.py).
"""

import codecs
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields

from . import kv_state
from .errors import BelleError, ContextOverflowError, ModelFileError, SettingsError
from .gguf_info import KNOWN_ARCHITECTURES, ModelInfo, read_model_info
from .templates import ChatMessage, ChatTemplate, Piece, make_template, pick_template_name

log = logging.getLogger(__name__)


# What each sampling setting accepts (inclusive); the CLI and the UI's settings dialog check against this.
SAMPLING_LIMITS = {"temperature": (0, 5), "top_p": (0, 1), "top_k": (0, 100000), "min_p": (0, 1),
                   "repeat_penalty": (0, 5), "max_tokens": (1, 1 << 20), "seed": (-1, 2**31 - 1)}


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int = -1  # -1: a new random seed per reply
    max_tokens: int = 512  # reply budget; also reserved when fitting history into n_ctx

    def update(self, name: str, value) -> "Sampling":
        """Set one field from user input (a string from /set or a number from the UI)."""
        types = {f.name: f.type for f in fields(self)}
        if name not in types:
            raise SettingsError(f"unknown setting '{name}' (settings: {', '.join(types)})")
        whole = types[name] in (int, "int")
        try:
            parsed = (int if whole else float)(str(value).strip() if isinstance(value, str) else value)
            if whole and isinstance(value, float) and not value.is_integer():
                raise ValueError
        except (TypeError, ValueError):
            kind = "a whole number" if whole else "a number"
            raise SettingsError(f"setting '{name}' needs {kind}, got {value!r}") from None
        lo, hi = SAMPLING_LIMITS[name]
        if not lo <= parsed <= hi:
            raise SettingsError(f"setting '{name}' must be between {lo} and {hi}, got {parsed}")
        setattr(self, name, parsed)
        return self

    @classmethod
    def from_dict(cls, data: dict | None) -> "Sampling":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass
class LoadSettings:
    n_ctx: int = 4096
    n_threads: int | None = None  # decoding; None: physical cores (threads.default_threads), a phone's few
    n_threads_batch: int | None = None  # prompt reading; None: n_threads if given, else every core, a phone's few
    n_batch: int | None = None  # None: llama-cpp-python's 512; a phone's 64
    n_gpu_layers: int = 0
    use_mmap: bool | None = None  # None: off on CPU, on when layers are offloaded or on a phone
    template: str | None = None  # None/"auto": from the model's metadata
    # KV cache type: "q8_0" halves the cache (and saved states); llama.cpp needs flash attention
    # for a quantized V cache, so q8_0 turns it on (f16 keeps it off, as before).
    kv_type: str = "f16"


KV_TYPES = ("f16", "q8_0")


@dataclass
class ReplyStats:
    prompt_tokens: int = 0  # tokens in the rendered prompt
    cached_tokens: int = 0  # of those, reused from the KV cache
    generated_tokens: int = 0
    ttft_s: float = 0.0  # request start to first token
    prefill_tok_s: float = 0.0  # newly evaluated prompt tokens / ttft
    decode_tok_s: float = 0.0  # tokens after the first / time after the first
    total_s: float = 0.0
    stop_reason: str = ""  # "eos" | "length" | "stop" | "cancelled" | "context" | "interrupted"
    dropped_messages: int = 0  # older messages left out to fit the context
    restored_tokens: int = 0  # prompt tokens that came from the conversation's saved KV state

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Fit:
    """What goes into the prompt: the system prompt, then the newest turns that fit."""
    messages: list[ChatMessage]
    dropped: list[int] = field(default_factory=list)  # indexes into the history that were left out
    prompt_tokens: list[int] = field(default_factory=list)


# Prompt reading is done in chunks so that Stop works while a long prompt is read: llama.cpp's
# decode call cannot be interrupted, so a cancel is seen between chunks. Chunks are sized to take
# about PREFILL_CHUNK_S each, from the speed measured on the chunks before (a 7B model on a laptop
# CPU reads ~16 tokens/s, a 135M one ~150-250). benchmarks/prefill_chunks.py on the default model,
# 2 cores: 0.5 s chunks read at 0.95 of the one-call speed and stopped 0.42 s after a cancel, 1.0 s
# chunks at 0.98 and 0.6 s; reading the whole 1,926-token prompt took 12 s.
PREFILL_CHUNK_S = 1.0
PREFILL_FIRST_CHUNK = 16  # tokens: a first measurement that is quick even for a 7B model
PREFILL_MIN_CHUNK = 32  # smaller batches waste most of each pass over the weights


class Reply:
    """A streaming reply: iterate for text pieces; afterwards `.text` and `.stats` are final.
    `cancel()` (from any thread) stops it within one token, or within one prompt chunk while the
    prompt is read, and keeps what was generated.

    With `continuation=True` the prompt ends inside an assistant message (Continue after a reply
    was cut off) or is raw text (`Engine.complete`), and the text goes on from there, leading
    whitespace included.

    `stop`: the strings that end the reply (not included in its text); None means the template's.

    `conversation`: the conversation's id when the engine may restore and save its KV state
    (kv_state.py); None for replies that belong to no stored conversation (the server, complete)."""

    def __init__(self, engine: "Engine", fit: Fit, sampling: Sampling, cancel: threading.Event | None,
                 continuation: bool = False, stop: tuple[str, ...] | None = None, conversation: int | None = None):
        self.engine = engine
        self.conversation = conversation
        # Taken now, in the caller's thread: the save runs later in another one.
        self.states = kv_state.folder() if conversation is not None and engine.state_budget_bytes > 0 else None
        self.fit = fit
        self.sampling = sampling
        self.cancelled = cancel or threading.Event()
        self.continuation = continuation
        self.stop = engine.template.stop if stop is None else tuple(s for s in stop if s)  # "" would stop at once
        self.text = ""
        self.stats = ReplyStats(prompt_tokens=len(fit.prompt_tokens), dropped_messages=len(fit.dropped))
        self.done = False

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self) -> Iterator[str]:
        try:
            with self.engine.lock:  # one reply at a time per loaded model
                yield from self._run()
        finally:
            # Stopped and cancelled replies too: their KV is as good a start as any. Off the token
            # loop and outside the lock: a background thread copies the KV and writes the file.
            if self.states is not None:
                kv_state.schedule_save(self.engine, self.conversation, self.states, self.engine.state_budget_bytes)

    def _restore(self, tokens: list[int]) -> None:
        """Under the lock, before the prompt is read: bring back the conversation's saved KV if it
        gives a longer prefix than what the KV holds now; then this reply owns the KV."""
        engine = self.engine
        kv_state.before_reply(engine, self.conversation)
        if self.states is not None:
            self.stats.restored_tokens = kv_state.restore(engine, self.states, self.conversation,
                                                          engine.template.name, tokens)
        engine.owner = self.conversation
        engine.owner_template = engine.template.name

    def _read_prompt(self, tokens: list[int]) -> bool:
        """Evaluate all prompt tokens but the last (which `generate` evaluates to get the first
        token's logits) in interruptible chunks, reusing the cached prefix. False if cancelled."""
        llm, stats = self.engine.llm, self.stats
        cached = min(_common_prefix(llm._input_ids.tolist(), tokens), len(tokens) - 1) if llm.n_tokens else 0
        if cached and not llm._ctx.kv_cache_seq_rm(-1, cached, -1):
            cached = 0  # this model's cache cannot drop a suffix (recurrent models): read it all
        llm.n_tokens = cached  # llm.eval() clears the KV cache from here on
        stats.cached_tokens = cached
        pos, chunk, end = cached, PREFILL_FIRST_CHUNK, len(tokens) - 1
        while pos < end:
            if self.cancelled.is_set():
                return False
            batch = tokens[pos : pos + chunk]
            t0 = time.perf_counter()
            llm.eval(batch)
            rate = len(batch) / max(time.perf_counter() - t0, 1e-6)
            pos += len(batch)
            chunk = max(PREFILL_MIN_CHUNK, min(llm.n_batch, int(rate * PREFILL_CHUNK_S)))
        return not self.cancelled.is_set()

    def _run(self) -> Iterator[str]:
        llm, s, stats = self.engine.llm, self.sampling, self.stats
        tokens = self.fit.prompt_tokens
        llm.set_seed(s.seed if s.seed >= 0 else int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF)
        stop_strings = self.stop
        n_ctx = self.engine.n_ctx
        hold = max((len(x) for x in stop_strings), default=0)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pending = ""  # decoded text not yet yielded (may hold the start of a stop string)
        start = time.perf_counter()
        first_at = None
        stats.stop_reason = "interrupted"  # every normal way out of the loops below sets its own reason
        self._restore(tokens)
        if not self._read_prompt(tokens):
            stats.stop_reason = "cancelled"
            stats.ttft_s = stats.total_s = time.perf_counter() - start
            self.done = True
            return
        gen = llm.generate(tokens, top_k=s.top_k, top_p=s.top_p, min_p=s.min_p, temp=s.temperature,
                           repeat_penalty=s.repeat_penalty)
        try:
            for token in gen:
                if first_at is None:
                    first_at = time.perf_counter()
                if self.cancelled.is_set():
                    stats.stop_reason = "cancelled"
                    break
                if self.engine.is_eog(token):
                    stats.stop_reason = "eos"
                    break
                stats.generated_tokens += 1
                pending += decoder.decode(llm.detokenize([token]))
                if not self.continuation and not self.text:
                    if not pending.strip():
                        pending = ""  # models often open with whitespace; don't show it
                        continue
                    pending = pending.lstrip()
                cut = _find_stop(pending, stop_strings)
                if cut is not None:
                    pending = pending[:cut]
                    stats.stop_reason = "stop"
                    break
                ready = len(pending) - hold
                if ready > 0:
                    self.text += pending[:ready]
                    yield pending[:ready]
                    pending = pending[ready:]
                if stats.generated_tokens >= s.max_tokens:
                    stats.stop_reason = "length"
                    break
                if llm.n_tokens + 1 >= n_ctx:
                    stats.stop_reason = "context"
                    break
        finally:
            gen.close()
            # Bytes of a character cut off by max_tokens are dropped, not shown as U+FFFD.
            if pending and stats.stop_reason != "stop":
                cut = _find_stop(pending, stop_strings)
                pending = pending[:cut] if cut is not None else pending
            end = time.perf_counter()
            first_at = first_at or end
            stats.ttft_s = first_at - start
            stats.total_s = end - start
            new_prompt = len(tokens) - stats.cached_tokens
            # ~0 tok/s would read as "slow" when everything came from the cache: say nothing instead
            stats.prefill_tok_s = new_prompt / stats.ttft_s if stats.ttft_s > 0 and new_prompt > 1 else 0.0
            after_first = stats.generated_tokens - 1
            stats.decode_tok_s = after_first / (end - first_at) if after_first > 0 and end > first_at else 0.0
            self.done = True
        if pending:
            self.text += pending
            yield pending


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class Engine:
    """A loaded model. Create with `Engine.load(path, settings)`; `close()` frees it."""

    def __init__(self, llm, info: ModelInfo, settings: LoadSettings, template: ChatTemplate):
        self.llm = llm
        self.info = info
        self.settings = settings
        self.template = template
        self.lock = threading.Lock()
        self.closed = False
        # Saved KV states (kv_state.py): off (0) unless the owner of the engine sets a budget
        # (EngineCache does, from the settings).
        self.state_budget_bytes = 0
        self.flash_attn = settings.kv_type == "q8_0"
        self.owner: int | None = None  # the conversation whose tokens are in the KV; None: no stored one
        self.owner_template = template.name  # the template that rendered them
        self.model_identity = kv_state.model_identity(info.path)
        specials = sorted(info.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None
        import llama_cpp

        self._vocab = llm._model.vocab
        self._is_eog = llama_cpp.llama_vocab_is_eog

    @classmethod
    def load(cls, path, settings: LoadSettings | None = None, catalog_template: str | None = None) -> "Engine":
        settings = settings or LoadSettings()
        info = read_model_info(path)
        import llama_cpp  # deferred: loads the shared library

        if settings.n_ctx < 64:
            raise SettingsError(f"n_ctx must be at least 64, got {settings.n_ctx}")
        if settings.kv_type not in KV_TYPES:
            raise SettingsError(f"KV cache type must be one of {', '.join(KV_TYPES)}, got {settings.kv_type!r}")
        kwargs = dict(model_path=str(path), n_ctx=settings.n_ctx, n_gpu_layers=settings.n_gpu_layers,
                      verbose=logging.getLogger("llama_cpp").isEnabledFor(logging.DEBUG), **_tuning(settings))
        if settings.kv_type == "q8_0":
            # llama.cpp refuses a quantized V cache without flash attention
            kwargs.update(type_k=llama_cpp.GGML_TYPE_Q8_0, type_v=llama_cpp.GGML_TYPE_Q8_0, flash_attn=True)
        try:
            llm = llama_cpp.Llama(**kwargs)
        except (ValueError, RuntimeError, OSError) as err:
            if info.architecture not in KNOWN_ARCHITECTURES:
                raise ModelFileError(f"{path}: architecture '{info.architecture}' is not supported by this "
                                     f"llama.cpp build") from None
            raise ModelFileError(f"{path}: llama.cpp could not load the model ({err})") from None
        requested = settings.template if settings.template not in (None, "auto") else None
        name = pick_template_name(info.chat_template, requested or (catalog_template if catalog_template != "gguf" else None))
        template = make_template(name, info.chat_template, info.bos_token, info.eos_token)
        log.info("loaded %s (%s, n_ctx=%d, mmap=%s, threads=%d/%d, n_batch=%d, template=%s, kv=%s)", path,
                 info.architecture, settings.n_ctx, kwargs["use_mmap"], llm.n_threads, llm.n_threads_batch, llm.n_batch,
                 name, settings.kv_type)
        return cls(llm, info, settings, template)

    def close(self) -> None:
        with self.lock:  # never under a running reply or KV snapshot
            self.closed = True
            self.llm.close()

    @property
    def n_ctx(self) -> int:
        """The context size we may fill. llama.cpp rounds the context up (300 becomes 512), but
        llama-cpp-python sizes its token and logit arrays by the n_ctx asked for: filling past that
        crashed with "could not broadcast input array from shape (39,) into shape (0,)"."""
        return min(self.llm.n_ctx(), len(self.llm.input_ids))

    def is_eog(self, token: int) -> bool:
        return bool(self._is_eog(self._vocab, token))

    def set_template(self, name: str | None) -> None:
        name = pick_template_name(self.info.chat_template, name)
        self.template = make_template(name, self.info.chat_template, self.info.bos_token, self.info.eos_token)

    # tokenization

    def tokenize_pieces(self, pieces: list[Piece]) -> list[int]:
        """Each piece is tokenized on its own: content with special-token parsing off, scaffold
        split at its special tokens (<|im_start|>, </s>) and each stretch between them on its own.
        This is exactly how belle's training tokenizes (training/encode.py), so a model trained here
        sees the tokens it was trained on; separate pieces also keep a template's trailing space from
        merging with the first word of the reply. For ordinary text, where a piece boundary is also a
        pre-tokenizer boundary, it equals llama.cpp's tokenization of the whole prompt."""
        out: list[int] = []

        def text_tokens(text: str) -> None:
            if text:
                out.extend(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

        for piece in pieces:
            if piece.is_content or self._special_re is None:
                text_tokens(piece.text)
                continue
            for part in self._special_re.split(piece.text):
                token_id = self.info.special_tokens.get(part)
                if token_id is not None:
                    out.append(token_id)
                else:
                    text_tokens(part)
        return out

    def prompt_tokens(self, messages: list[ChatMessage], prefix: str = "") -> list[int]:
        """The prompt for the next assistant message; `prefix` is the start of that message when an
        answer that was cut off is continued."""
        pieces = self.template.render(messages, add_generation_prompt=True)
        return self.tokenize_pieces(pieces + [Piece(prefix, True)] if prefix else pieces)

    def count_tokens(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # context fitting

    def fit(self, history: list[ChatMessage], reply_budget: int, policy: str = "truncate", prefix: str = "") -> Fit:
        """Keep the system message(s) and the newest turns so that prompt + reply_budget <= n_ctx.
        Whole turns are dropped from the oldest (a user message and the replies after it)."""
        system = [m for m in history if m.role == "system"]
        turns = [i for i, m in enumerate(history) if m.role != "system"]
        limit = self.n_ctx - reply_budget
        if limit <= 0:
            raise ContextOverflowError(f"max_tokens {reply_budget} leaves no room for the prompt in n_ctx {self.n_ctx}")
        starts = [i for i in turns if history[i].role == "user"] or turns[:1]
        for n_dropped_turns, start in enumerate(starts):
            kept = system + [history[i] for i in turns if i >= start]
            tokens = self.prompt_tokens(kept, prefix)
            if len(tokens) <= limit:
                dropped = [i for i in turns if i < start]
                if dropped and policy == "refuse":
                    raise ContextOverflowError(
                        f"the conversation needs {len(self.prompt_tokens(system + [history[i] for i in turns]))} tokens "
                        f"+ {reply_budget} for the reply, more than n_ctx {self.n_ctx}; start a new chat, raise n_ctx, "
                        "or set overflow to truncate")
                return Fit(kept, dropped, tokens)
        raise ContextOverflowError(
            f"the last message alone needs more than {limit} tokens (n_ctx {self.n_ctx} minus max_tokens "
            f"{reply_budget}); shorten it, lower max_tokens or raise n_ctx")

    def reply(self, history: list[ChatMessage], sampling: Sampling | None = None,
              cancel: threading.Event | None = None, overflow: str = "truncate", prefix: str = "",
              stop: tuple[str, ...] | list[str] = (), conversation: int | None = None) -> Reply:
        """Start the next assistant message, or continue one that begins with `prefix` (its text
        so far; `history` then ends before it). `stop`: strings that end the reply besides the
        template's own (an API client's `stop`). `conversation`: the stored conversation's id,
        whose KV state may be restored and saved (see Reply)."""
        sampling = sampling or Sampling()
        return Reply(self, self.fit(history, _reply_budget(sampling, self.n_ctx), overflow, prefix), sampling, cancel,
                     continuation=bool(prefix), stop=(*self.template.stop, *stop), conversation=conversation)

    def complete(self, prompt: str, sampling: Sampling | None = None, cancel: threading.Event | None = None,
                 stop: tuple[str, ...] | list[str] = ()) -> Reply:
        """Continue raw text, no chat template (an API's /v1/completions). The prompt is tokenized
        as plain text, so special-token text in it stays text, with BOS in front only when the
        model's tokenizer asks for one; the reply keeps its leading whitespace (" Paris" after
        "The capital of France is"). Only `stop` and the model's end-of-generation tokens end it."""
        sampling = sampling or Sampling()
        # add_bos=True is llama.cpp's add_special: it adds BOS only if the vocab says so
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        if not tokens:
            raise BelleError("the prompt is empty: there is nothing to continue")
        budget = _reply_budget(sampling, self.n_ctx)
        if len(tokens) + budget > self.n_ctx:
            raise ContextOverflowError(f"the prompt needs {len(tokens)} tokens + {budget} for the reply, more than n_ctx "
                                       f"{self.n_ctx}; shorten it, lower max_tokens or raise n_ctx")
        return Reply(self, Fit([], [], tokens), sampling, cancel, continuation=True, stop=tuple(stop))


def _tuning(settings: LoadSettings) -> dict:
    """Threads, batch and mmap for llama_cpp.Llama: what the settings say, else the phone's values on
    a phone, else the desktop defaults (llama-cpp-python's own thread default is cpu_count // 2: one
    thread on a 2-core machine)."""
    from .device import phone_load
    from .threads import default_threads

    phone = phone_load()  # None on a desktop
    if settings.n_threads:
        threads = settings.n_threads, settings.n_threads_batch or settings.n_threads
    elif phone:
        threads = phone.n_threads, phone.n_threads_batch
    else:
        threads = default_threads()
    if settings.use_mmap is not None:
        use_mmap = settings.use_mmap
    else:
        use_mmap = phone.use_mmap if phone else settings.n_gpu_layers != 0
    tuning = dict(n_threads=threads[0], n_threads_batch=settings.n_threads_batch or threads[1], use_mmap=use_mmap)
    n_batch = settings.n_batch or (phone.n_batch if phone else None)
    if n_batch:
        tuning["n_batch"] = n_batch
    return tuning


def _reply_budget(sampling: Sampling, n_ctx: int) -> int:
    """Room kept free for the reply. Capped at half the context so a large max_tokens cannot push
    the whole history out; the reply then stops when the context is full."""
    return min(sampling.max_tokens, n_ctx // 2)
