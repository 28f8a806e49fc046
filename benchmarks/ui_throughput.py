"""How much speed the chat UI costs: decode tokens/s as seen in the browser, divided by the
engine's own decode tokens/s on the same model, prompt and settings, in the same run.

Engine-only: `Engine.reply` iterated in this process. UI: `belle ui --web` in a subprocess, shown
in headless Chromium (Playwright) with the accessibility tree off, as for most users. The browser's
websocket frames are timestamped as they arrive: the rate is (tokens - 1) / (arrival of the frame
with the finished reply - arrival of the first frame with its text). Greedy sampling (temperature 0)
with a fixed seed, so both sides generate the same tokens. Engine-only and UI runs alternate, so
both see the same load from the rest of the machine. Target >= 0.9.

    .venv/bin/python benchmarks/ui_throughput.py [--runs 3] [--max-tokens 256] [--out FILE]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIRST_TILE = (100, 121)  # sidebar, first conversation
COMPOSER = (750, 764)  # the message box
PROMPT = "Write a long, detailed story about a dragon who learns to cook, with many chapters."


class EngineOnly:
    """The same model loaded in this process; `run()` is one timed reply with nothing else going on."""

    def __init__(self, model_path: Path, threads: int, max_tokens: int):
        from belle.app.engine import Engine, LoadSettings, Sampling
        from belle.app.templates import ChatMessage

        self.engine = Engine.load(model_path, LoadSettings(n_ctx=4096, n_threads=threads))
        self.history = [ChatMessage("user", PROMPT)]
        self.sampling = Sampling(temperature=0.0, seed=42, max_tokens=max_tokens)

    def run(self) -> dict:
        self.engine.llm.reset()  # the same cold prompt as the UI's first turn of a new chat
        reply = self.engine.reply(self.history, self.sampling)
        for _ in reply:
            pass
        s = reply.stats
        return {"tokens": s.generated_tokens, "decode_tok_s": s.decode_tok_s, "ttft_s": s.ttft_s}

    def close(self) -> None:
        self.engine.close()


def ui_run(browser, server, store, conv_id: int, title: str, shot: Path, painting: bool) -> dict:
    """One reply in a fresh browser session (Flet keeps a tab's session across reloads)."""
    store.update_conversation(conv_id, title=title)  # newest first: the top tile of the sidebar
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    frames: list[tuple[float, bytes]] = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda data: frames.append(
        (time.monotonic(), data if isinstance(data, bytes) else data.encode()))))
    page.goto(server.url)
    page.wait_for_timeout(3000)
    # clicks at the layout's coordinates (1280x800): the accessibility tree stays off, as for most users
    page.mouse.click(*FIRST_TILE)
    page.wait_for_timeout(500)
    page.mouse.click(*COMPOSER)
    page.keyboard.type(PROMPT)
    frames.clear()
    page.keyboard.press("Enter")
    if not painting:  # headless Chromium stops drawing a tab that is not in front; messages still arrive
        page.context.new_page().bring_to_front()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not any(b"tok/s" in f for _, f in frames):
        page.wait_for_timeout(500)
    page.bring_to_front()
    page.wait_for_timeout(300)
    page.screenshot(path=shot)
    page.context.close()
    reply = store.get_message(store.get_conversation(conv_id).current_leaf)
    head = reply.content[:6].encode()
    first_seen = next(t for t, f in frames if head in f)
    done_seen = next(t for t, f in frames if b"tok/s" in f)
    tokens = reply.stats["generated_tokens"]
    return {"tokens": tokens, "ui_tok_s": (tokens - 1) / (done_seen - first_seen),
            "server_decode_tok_s": reply.stats["decode_tok_s"]}


def interleaved_runs(engine: EngineOnly, runs: int, max_tokens: int, threads: int, shots: Path):
    """Per round: an engine-only reply, a UI reply the browser draws, and one it receives without
    drawing; alternating, so all three see the same load from the rest of the machine."""
    from playwright.sync_api import sync_playwright

    from belle.app.chat_store import ChatStore
    from belle.app.session import ConversationSettings
    from tests.ui.browser import CHROMIUM, CHROMIUM_ARGS, UIServer

    home = Path(tempfile.mkdtemp(prefix="belle-ui-bench-"))
    (home / "config.json").write_text(json.dumps({"language": "en", "n_threads": threads}))
    settings = ConversationSettings()
    settings.sampling.temperature, settings.sampling.seed, settings.sampling.max_tokens = 0.0, 42, max_tokens
    store = ChatStore(home / "belle.db")
    eng, painted, unpainted = [], [], []
    server = UIServer(shots / "server.log", env={"BELLE_HOME": str(home)})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for i in range(runs):
                eng.append(engine.run())
                for painting, out in ((True, painted), (False, unpainted)):
                    title = f"bench {i} {'drawn' if painting else 'not drawn'}"
                    conv_id = store.create_conversation(title, settings=settings.as_dict()).id
                    out.append(ui_run(browser, server, store, conv_id, title, shots / f"ui_run_{i}_{painting}.png",
                                      painting))
            browser.close()
    finally:
        server.close()
        store.close()
    return eng, painted, unpainted


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "test-output" / "benchmarks" / "ui_throughput.json")
    args = ap.parse_args()
    os.environ.setdefault("BELLE_MODELS_DIR", str(ROOT / ".cache" / "test-models"))
    from belle.app import models

    model_path = models.pull("smollm2-135m")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    engine = EngineOnly(model_path, args.threads, args.max_tokens)
    try:
        eng, ui, quiet = interleaved_runs(engine, args.runs, args.max_tokens, args.threads, args.out.parent)
    finally:
        engine.close()
    eng_rate = statistics.median(r["decode_tok_s"] for r in eng)
    ratios = [u["ui_tok_s"] / e["decode_tok_s"] for u, e in zip(ui, eng)]
    quiet_ratios = [u["ui_tok_s"] / e["decode_tok_s"] for u, e in zip(quiet, eng)]
    result = {"model": model_path.name, "prompt": PROMPT, "max_tokens": args.max_tokens, "threads": args.threads,
              "engine_runs": eng, "ui_runs": ui, "ui_runs_not_drawn": quiet,
              "engine_decode_tok_s": eng_rate, "ui_tok_s": statistics.median(r["ui_tok_s"] for r in ui),
              "ratio": statistics.median(ratios), "ratios": ratios,
              "ratio_not_drawn": statistics.median(quiet_ratios), "ratios_not_drawn": quiet_ratios,
              "target": 0.9, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'round':<7}{'engine tok/s':>14}{'UI tok/s':>10}{'ratio':>8}{'UI, not drawn':>16}{'ratio':>8}")
    for i, (e, u, q) in enumerate(zip(eng, ui, quiet)):
        print(f"{i:<7}{e['decode_tok_s']:>14.1f}{u['ui_tok_s']:>10.1f}{ratios[i]:>8.2f}{q['ui_tok_s']:>16.1f}"
              f"{quiet_ratios[i]:>8.2f}")
    print(f"\nmedian ratio UI / engine-only: {result['ratio']:.3f} (target >= 0.9); with the browser not "
          f"drawing: {result['ratio_not_drawn']:.3f}\n{os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
