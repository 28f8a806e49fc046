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


def interleaved_runs(engine: EngineOnly, runs: int, max_tokens: int, threads: int, shots: Path):
    """Engine-only and UI runs alternate, so both see the same load from the rest of the machine."""
    from playwright.sync_api import sync_playwright

    from belle.app.chat_store import ChatStore
    from belle.app.session import ConversationSettings
    from tests.ui.browser import CHROMIUM, CHROMIUM_ARGS, UIServer

    home = Path(tempfile.mkdtemp(prefix="belle-ui-bench-"))
    (home / "config.json").write_text(json.dumps({"language": "en", "n_threads": threads}))
    settings = ConversationSettings()
    settings.sampling.temperature, settings.sampling.seed, settings.sampling.max_tokens = 0.0, 42, max_tokens
    store = ChatStore(home / "belle.db")
    ids = [store.create_conversation(f"bench run {i}", settings=settings.as_dict()).id for i in range(runs)]
    out, eng = [], []
    server = UIServer(shots / "server.log", env={"BELLE_HOME": str(home)})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            frames: list[tuple[float, bytes]] = []
            for i, conv_id in enumerate(ids):
                eng.append(engine.run())
                store.update_conversation(conv_id, title=f"bench run {i}")  # newest first: the top tile
                # a fresh context per run: Flet keeps a tab's session across reloads
                page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
                page.on("websocket", lambda ws: ws.on("framereceived", lambda data: frames.append(
                    (time.monotonic(), data if isinstance(data, bytes) else data.encode()))))
                page.goto(server.url)
                page.wait_for_timeout(3000)
                # Clicks at the layout's coordinates (1280x800): the accessibility tree stays off
                page.mouse.click(*FIRST_TILE)
                page.wait_for_timeout(500)
                page.mouse.click(*COMPOSER)
                page.keyboard.type(PROMPT)
                frames.clear()
                page.keyboard.press("Enter")
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline and not any(b"tok/s" in f for _, f in frames):
                    page.wait_for_timeout(500)
                conv = store.get_conversation(conv_id)
                reply = store.get_message(conv.current_leaf)
                head = reply.content[:6].encode()
                first_seen = next(t for t, f in frames if head in f)
                done_seen = next(t for t, f in frames if b"tok/s" in f)
                page.screenshot(path=shots / f"ui_run_{i}.png")
                page.context.close()
                conv = store.get_conversation(conv_id)
                stats = store.get_message(conv.current_leaf).stats
                tokens = stats["generated_tokens"]
                out.append({"tokens": tokens, "ui_tok_s": (tokens - 1) / (done_seen - first_seen),
                            "server_decode_tok_s": stats["decode_tok_s"]})
                # the server's first load is not part of the rate; the same model stays loaded
            browser.close()
    finally:
        server.close()
        store.close()
    return eng, out


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
        eng, ui = interleaved_runs(engine, args.runs, args.max_tokens, args.threads, args.out.parent)
    finally:
        engine.close()
    eng_rate = statistics.median(r["decode_tok_s"] for r in eng)
    ui_rate = statistics.median(r["ui_tok_s"] for r in ui)
    pair_ratios = [u["ui_tok_s"] / e["decode_tok_s"] for u, e in zip(ui, eng)]
    result = {"model": model_path.name, "prompt": PROMPT, "max_tokens": args.max_tokens, "threads": args.threads,
              "engine_runs": eng, "ui_runs": ui, "engine_decode_tok_s": eng_rate, "ui_tok_s": ui_rate,
              "ratio": ui_rate / eng_rate, "pair_ratios": pair_ratios,
              "median_pair_ratio": statistics.median(pair_ratios), "target": 0.9,
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{'':24}{'tokens':>8}{'tok/s':>10}")
    for i, r in enumerate(eng):
        print(f"engine-only run {i:<8}{r['tokens']:>8}{r['decode_tok_s']:>10.1f}")
    for i, r in enumerate(ui):
        print(f"UI (browser) run {i:<7}{r['tokens']:>8}{r['ui_tok_s']:>10.1f}   (server-side decode {r['server_decode_tok_s']:.1f})")
    print("ratio per run (UI / engine-only run just before it): " + ", ".join(f"{r:.2f}" for r in pair_ratios))
    print(f"\nmedian: engine {eng_rate:.1f} tok/s, UI {ui_rate:.1f} tok/s, ratio {ui_rate / eng_rate:.3f} "
          f"(target >= 0.9)\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
