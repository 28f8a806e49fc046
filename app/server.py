"""`belle serve`'s HTTP API: OpenAI-compatible chat and text completions on the one loaded model.

- Chat prompts are built by the engine exactly as in `belle chat`: the model's template, with
  message text tokenized as plain text, so a client's `<|im_end|>` cannot end a turn.
- One model, one reply at a time. Requests wait their turn in arrival order (asyncio.Lock wakes
  its waiters first come, first served), the reply runs in a thread of its own and hands pieces to
  the event loop, so waiting requests, /v1/models and error answers never block on the model.
- A client that goes away has its reply cancelled at once (within one token): the next request in
  the queue does not wait for an answer nobody reads.
- Conversations are written to the user's store only when the server was started with --save.

Request bodies are read by hand rather than through pydantic models so that every mistake gets an
OpenAI-style error that names the field (`{"error": {"message", "type", "code", "param"}}`).
"""

import asyncio
import hmac
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from .chat_store import ChatStore
from .engine import SAMPLING_LIMITS, Engine, Reply, Sampling
from .errors import BelleError, ContextOverflowError, RequestError
from .templates import ChatMessage

log = logging.getLogger(__name__)

MAX_STOPS = 4  # as OpenAI's API
# OpenAI role names -> the template's. "developer" is OpenAI's newer name for the system message.
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Features that would change what the answer means; answering without them would mislead the client.
UNSUPPORTED = ("tools", "functions", "function_call", "logprobs", "top_logprobs", "logit_bias", "audio", "echo",
               "suffix", "prediction")


@dataclass
class ServeOptions:
    model_id: str  # what clients see in /v1/models: the catalog id, or the file name of an imported model
    model_file: str  # the file name, accepted in a request's `model` as well
    api_key: str | None = None  # None: no Authorization header needed (loopback only; cli_serve checks)
    template: str = "auto"  # the --template the model was loaded with, stored with saved conversations


@dataclass
class Job:
    """One request's reply and what its answer needs."""
    id: str
    reply: Reply
    history: list[ChatMessage] | None  # chat requests only: saved with --save
    created: int = field(default_factory=lambda: int(time.time()))


class ServerState:
    def __init__(self, engine: Engine, options: ServeOptions, store: ChatStore | None):
        self.engine = engine
        self.options = options
        self.store = store
        self.turn = asyncio.Lock()  # held from the start of a reply until its thread has let go of the model
        self.active: set[Reply] = set()
        self.closing = False

    def shutdown(self) -> None:
        """Ctrl+C: stop the replies being written and those waiting, so the server exits at once
        instead of after every queued answer (uvicorn waits for open responses to finish)."""
        self.closing = True
        for reply in list(self.active):
            reply.cancel()


# --- reading requests ---------------------------------------------------------------------------

def _number(body: dict, name: str, lo: float, hi: float, whole: bool = False) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    if whole and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        kind = "an integer" if whole else "a number"
        raise RequestError(f"'{name}' must be {kind}, got {json.dumps(value)}", param=name)
    if not lo <= value <= hi:
        raise RequestError(f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return value


def sampling_from(body: dict) -> Sampling:
    """OpenAI sampling fields -> the engine's Sampling. What the request leaves out keeps belle's
    chat defaults (temperature 0.7, top_p 0.9, top_k 40, min_p 0.05, repeat_penalty 1.1, 512
    tokens), so a bare request answers as `belle chat` would. top_k, min_p and repeat_penalty are
    accepted too, as llama.cpp's own server does."""
    sampling = Sampling()
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"):
        value = _number(body, name, *SAMPLING_LIMITS[name], whole=name in ("top_k", "seed"))
        if value is not None:
            setattr(sampling, name, value)
    # max_completion_tokens is the newer name of max_tokens; a reply longer than the context stops
    # when the context is full (finish_reason "length"), as llama.cpp's server does.
    for name in ("max_tokens", "max_completion_tokens"):
        value = _number(body, name, *SAMPLING_LIMITS["max_tokens"], whole=True)
        if value is not None:
            sampling.max_tokens = value
    # presence_penalty and frequency_penalty are accepted and ignored: llama.cpp's penalties of
    # those names are tuned differently, and mapping them would quietly change answers.
    for name in ("presence_penalty", "frequency_penalty"):
        _number(body, name, -2, 2)
    return sampling


def stops_from(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise RequestError(f"'stop' must be a string or a list of up to {MAX_STOPS} strings", param="stop")
    if len(values) > MAX_STOPS:
        raise RequestError(f"'stop' may hold up to {MAX_STOPS} strings, got {len(values)}", param="stop")
    return tuple(values)


def _content(value, where: str, role: str) -> str:
    """Message content: a string, or a list of {"type": "text", "text": ...} parts (joined by
    newlines). An assistant message may have null content."""
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if not isinstance(value, list):
        raise RequestError(f"'{where}.content' must be a string or a list of text parts", param=f"{where}.content")
    texts = []
    for i, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            shown = f"type '{kind}'" if isinstance(kind, str) else "this part"
            raise RequestError(f"'{where}.content[{i}]': {shown} is not supported; belle serve reads only "
                               "{\"type\": \"text\", \"text\": ...} parts", param=f"{where}.content")
        texts.append(part["text"])
    return "\n".join(texts)


def messages_from(body: dict) -> list[ChatMessage]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"'{where}' must be an object with 'role' and 'content'", param=where)
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"'{where}.role' must be one of {', '.join(ROLES)}; got {json.dumps(role)}",
                               param=f"{where}.role")
        if message.get("tool_calls"):
            raise RequestError(f"'{where}.tool_calls': tools are not supported by belle serve", param=where)
        out.append(ChatMessage(ROLES[role], _content(message.get("content"), where, role)))
    return out


def check_model(model, options: ServeOptions) -> None:
    """A request may name the served model by its catalog id or its file name, or not at all."""
    if model is not None and model not in (options.model_id, options.model_file):
        raise RequestError(f"model {json.dumps(model)} is not served here; this server serves '{options.model_id}'",
                           status=404, code="model_not_found", param="model")


def check_common(body: dict, options: ServeOptions) -> None:
    """What chat and text completions share: one choice, a served model, no unsupported features."""
    check_model(body.get("model"), options)
    if body.get("n") not in (None, 1):
        raise RequestError(f"'n' must be 1: belle serve writes one answer per request, got {json.dumps(body['n'])}",
                           param="n")
    if body.get("best_of") not in (None, 1):
        raise RequestError("'best_of' must be 1", param="best_of")
    for name in UNSUPPORTED:
        if body.get(name):
            raise RequestError(f"'{name}' is not supported by belle serve", param=name)
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise RequestError("'response_format' other than {\"type\": \"text\"} is not supported by belle serve",
                           param="response_format")
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        raise RequestError("'stream' must be true or false", param="stream")
    options_value = body.get("stream_options")
    if options_value is not None and not isinstance(options_value, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")


async def _json_body(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON ({err})") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


# --- answers ------------------------------------------------------------------------------------

def finish_reason(stop_reason: str) -> str:
    """The engine's stop reasons in OpenAI's words: the model or a stop string ended it, or the token
    budget or the context did."""
    return "length" if stop_reason in ("length", "context") else "stop"


def usage(reply: Reply) -> dict:
    s = reply.stats
    return {"prompt_tokens": s.prompt_tokens, "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens}


def error_body(message: str, kind: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _sse(data) -> bytes:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


_END = object()


def _work(state: ServerState, job: Job, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    """The reply's thread: generate, hand each piece to the event loop, then give the model back
    (whatever happened: a model never given back would stall every later request)."""
    outcome = _END

    def finish() -> None:
        state.active.discard(job.reply)
        state.turn.release()
        queue.put_nowait(outcome)

    try:
        for piece in job.reply:
            loop.call_soon_threadsafe(queue.put_nowait, piece)
        s = job.reply.stats
        log.info("%s: %s after %d tokens (prompt %d, %d from cache; %.1f tok/s)", job.id, s.stop_reason,
                 s.generated_tokens, s.prompt_tokens, s.cached_tokens, s.decode_tok_s)
    except Exception as err:  # a bug or a llama.cpp failure: the client gets a 500, the server goes on
        log.exception("%s: the reply failed", job.id)
        outcome = _Failed(err)
    try:
        if state.store is not None and job.history is not None:
            save_conversation(state, job)
    except Exception:  # the answer still goes out; the store's trouble is in the log
        log.exception("%s: could not save the conversation", job.id)
    finally:
        try:
            loop.call_soon_threadsafe(finish)
        except RuntimeError:
            pass  # the event loop is closed: the server is gone and nobody waits


async def pieces(state: ServerState, job: Job) -> AsyncIterator[str]:
    """Wait for the model, then yield the reply's text pieces as they are generated. The model is
    released by the reply's thread when it ends, not here: a consumer that stops early (a client
    that went away) cancels the reply, and the next request starts once the thread has let go."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    await state.turn.acquire()
    try:
        state.active.add(job.reply)
        if state.closing:
            job.reply.cancel()
        threading.Thread(target=_work, args=(state, job, loop, queue), name=f"belle-{job.id}", daemon=True).start()
    except BaseException:
        state.active.discard(job.reply)
        state.turn.release()
        raise
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        job.reply.cancel()  # a no-op when the reply has ended; otherwise it stops within one token


async def _watch_disconnect(receive, job: Job) -> None:
    """Cancel the reply when the client goes away. Once the request body is read, uvicorn answers
    receive() only when the connection closes (or the response is complete), with http.disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass
    if not job.reply.done:
        log.info("%s: the client went away; cancelling the reply", job.id)
        job.reply.cancel()


async def run_to_end(state: ServerState, job: Job, receive) -> str:
    """A whole reply for a non-streaming request, cancelled if its client goes away meanwhile."""
    watcher = asyncio.create_task(_watch_disconnect(receive, job))
    try:
        return "".join([piece async for piece in pieces(state, job)])
    finally:
        watcher.cancel()


def _ended_badly(state: ServerState, job: Job) -> RequestError | None:
    """An error to send instead of an answer: the server is stopping (the reply was cancelled by
    Ctrl+C, not by its client)."""
    if job.reply.stats.stop_reason == "cancelled" and state.closing:
        return RequestError("the server is shutting down", status=503, code="server_shutting_down",
                            kind="server_error")
    return None


def _event_stream_class():
    from starlette.responses import Response

    class EventStream(Response):
        """Server-sent events of one reply. Unlike Starlette's StreamingResponse it listens for the
        client going away during the whole stream and cancels the reply then, and it always
        finishes the event generator, so the reply is never left running for a closed connection."""

        def __init__(self, job: Job, events: AsyncIterator[bytes]):
            self.job = job
            self.events = events
            self.status_code = 200
            self.background = None  # FastAPI attaches background tasks here

        async def __call__(self, scope, receive, send) -> None:
            watcher = asyncio.create_task(_watch_disconnect(receive, self.job))
            try:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                        (b"cache-control", b"no-cache")]})
                async for chunk in self.events:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                watcher.cancel()
                self.job.reply.cancel()
                await self.events.aclose()

    return EventStream


async def _stream_events(state: ServerState, job: Job, frame: Callable[[list], dict], first: dict | None,
                         piece: Callable[[str], dict], last: dict, include_usage: bool) -> AsyncIterator[bytes]:
    """The SSE events of a streamed reply. `frame(choices)` makes a chunk object; `first` (chat:
    the role) is sent at once, before the model is free; `piece(text)` is a choice with new text;
    `last` is the final choice, which gets the finish_reason."""
    def chunk(choice: dict | None) -> dict:
        out = frame([{"index": 0, **choice}] if choice is not None else [])
        if include_usage:  # OpenAI: null in every chunk but a last one that has no choices
            out["usage"] = None if choice is not None else usage(job.reply)
        return out

    if first is not None:
        yield _sse(chunk({**first, "finish_reason": None}))
    try:
        async for text in pieces(state, job):
            yield _sse(chunk({**piece(text), "finish_reason": None}))
    except Exception as err:  # the headers are sent: the error goes in the stream, as OpenAI does
        yield _sse(error_body(f"the reply failed: {err}", "server_error"))
        return
    failed = _ended_badly(state, job)
    if failed:
        yield _sse(error_body(str(failed), failed.kind, failed.code))
        return
    yield _sse(chunk({**last, "finish_reason": finish_reason(job.reply.stats.stop_reason)}))
    if include_usage:
        yield _sse(chunk(None))
    yield _sse("[DONE]")


# --- saving -------------------------------------------------------------------------------------

def save_conversation(state: ServerState, job: Job) -> None:
    """--save: the request's messages and the answer become a conversation in the user's store,
    titled by the first user message, so `belle chat --continue` and the app show it. Runs in the
    reply's thread, after the reply."""
    from .session import ConversationSettings, title_from

    reply, history, store, options = job.reply, job.history, state.store, state.options
    system = "\n\n".join(m.content for m in history if m.role == "system")
    turns = [m for m in history if m.role != "system"]
    first_user = next((m.content for m in turns if m.role == "user"), "")
    settings = ConversationSettings(sampling=reply.sampling, n_ctx=state.engine.settings.n_ctx, overflow="refuse")
    conversation = store.create_conversation(title_from(first_user), options.model_id, options.template, system,
                                             settings.as_dict())
    parent = None
    for message in turns:
        parent = store.add_message(conversation.id, parent, message.role, message.content).id
    if reply.text:
        # as in belle chat: only an exception leaves a reply incomplete; a stopped one is what was asked
        store.add_message(conversation.id, parent, "assistant", reply.text, model=options.model_id,
                          complete=reply.stats.stop_reason != "interrupted", stats=reply.stats.as_dict())
    log.info("%s: saved as conversation %d", job.id, conversation.id)


# --- the app ------------------------------------------------------------------------------------

def build_app(engine: Engine, options: ServeOptions, store: ChatStore | None = None):
    """The ASGI app serving `engine`. `store`: where --save writes conversations (None: nowhere).
    `app.state.belle.shutdown()` cancels every reply (for Ctrl+C)."""
    from fastapi import APIRouter, Depends, FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    state = ServerState(engine, options, store)
    EventStream = _event_stream_class()
    # No /docs: its page loads scripts from a CDN, and belle runs offline.
    app = FastAPI(title="belle", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.belle = state

    @app.exception_handler(RequestError)
    async def request_error(request, err: RequestError):
        return JSONResponse(error_body(str(err), err.kind, err.code, err.param), status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {err.detail}", code=code),
                            status_code=err.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, err: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(f"internal error: {err}", "server_error"), status_code=500)

    async def authorize(request: Request) -> None:
        if options.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not tell an attacker how much of a guess was right
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), options.api_key.encode()):
            raise RequestError("missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                               status=401, code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    def model_card() -> dict:
        return {"id": options.model_id, "object": "model", "created": int(engine.info.path.stat().st_mtime),
                "owned_by": "belle"}

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str):
        check_model(model_id, options)
        return model_card()

    async def start(make_reply) -> Reply:
        # Tokenizing a long prompt takes a while: off the event loop. The vocabulary is read-only,
        # so this may run while another reply is being generated.
        try:
            return await asyncio.to_thread(make_reply)
        except ContextOverflowError as err:
            raise RequestError(str(err), code="context_length_exceeded", param="messages") from None
        except BelleError as err:
            raise RequestError(str(err)) from None

    async def whole_answer(job: Job, request: Request, kind: str, choice: Callable[[str], dict]) -> dict:
        """A non-streaming answer: the whole reply in one choice (`choice(text)` gives its content)."""
        text = await run_to_end(state, job, request.receive)
        if failed := _ended_badly(state, job):
            raise failed
        return {"id": job.id, "object": kind, "created": job.created, "model": options.model_id,
                "system_fingerprint": None,
                "choices": [{"index": 0, **choice(text), "logprobs": None,
                             "finish_reason": finish_reason(job.reply.stats.stop_reason)}],
                "usage": usage(job.reply)}

    def stream_flags(body: dict) -> tuple[bool, bool]:
        stream = bool(body.get("stream"))
        include_usage = bool(stream and (body.get("stream_options") or {}).get("include_usage"))
        return stream, include_usage

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request)
        check_common(body, options)
        history, sampling, stop = messages_from(body), sampling_from(body), stops_from(body)
        stream, include_usage = stream_flags(body)
        reply = await start(lambda: engine.reply(history, sampling, overflow="refuse", stop=stop))
        job = Job(f"chatcmpl-{secrets.token_hex(12)}", reply, history)

        def frame(choices: list) -> dict:
            return {"id": job.id, "object": "chat.completion.chunk", "created": job.created,
                    "model": options.model_id, "system_fingerprint": None, "choices": choices}

        if stream:
            events = _stream_events(state, job, frame, {"delta": {"role": "assistant", "content": ""}},
                                    lambda text: {"delta": {"content": text}}, {"delta": {}}, include_usage)
            return EventStream(job, events)
        return await whole_answer(job, request, "chat.completion",
                                  lambda text: {"message": {"role": "assistant", "content": text}})

    @v1.post("/completions")
    async def completions(request: Request):
        body = await _json_body(request)
        check_common(body, options)
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str) or not prompt:
            raise RequestError("'prompt' must be a non-empty string (or a list of exactly one)", param="prompt")
        sampling, stop = sampling_from(body), stops_from(body)
        stream, include_usage = stream_flags(body)
        # Raw text, no template: never saved as a conversation, even with --save.
        reply = await start(lambda: engine.complete(prompt, sampling, stop=stop))
        job = Job(f"cmpl-{secrets.token_hex(12)}", reply, None)

        def frame(choices: list) -> dict:
            return {"id": job.id, "object": "text_completion", "created": job.created, "model": options.model_id,
                    "system_fingerprint": None, "choices": choices}

        if stream:
            events = _stream_events(state, job, frame, None, lambda text: {"text": text, "logprobs": None},
                                    {"text": "", "logprobs": None}, include_usage)
            return EventStream(job, events)
        return await whole_answer(job, request, "text_completion", lambda text: {"text": text})

    @v1.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(request: Request, path: str):
        raise RequestError(f"{request.method} /v1/{path}: belle serve has no such endpoint (it has /v1/models, "
                           "/v1/chat/completions, /v1/completions)", status=404, code="not_found")

    app.include_router(v1)
    return app
