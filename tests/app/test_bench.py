"""`belle bench` through the real entry point: progress while it runs, verdicts that follow the figure
they name, belle's default threads against the bare loop's best thread count."""

import json
import re

from belle.app.cli_bench import _verdict
from belle.app.threads import default_threads
from tests.conftest import run_belle


def test_verdict_follows_the_figure_it_names():
    # The reported run: 0.723 median was printed as "met" because the best-vs-best figure was >= 0.95.
    assert _verdict("decode ours/bare, median of per-round pairs", 0.723, ">=", 0.95).endswith("NOT met)")
    assert _verdict("decode ours/bare, median of per-round pairs", 0.95, ">=", 0.95).endswith(": met)")
    assert _verdict("TTFT turn 10 / turn 2", 1.6, "<=", 1.5).endswith("NOT met)")


def test_bench_shows_progress_and_one_verdict_per_target(default_model_path, tmp_path):
    out = tmp_path / "bench.json"
    r = run_belle("bench", "--rounds", "1", "--decode-tokens", "24", "--turns", "3", "-o", str(out), timeout=600)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())

    # progress: steps done/total and elapsed time, from 0 to the last step
    steps = re.findall(r"\[(\d+)/(\d+) steps, \d+m\d\ds\] ", r.stderr)
    total = len(data["bare_thread_sweep"]) + 2
    assert steps[0] == ("0", str(total)) and steps[-1] == (str(total), str(total)), r.stderr

    # threads: belle with its defaults, the bare loop at the best count of its sweep
    assert data["ours"]["threads"] == list(default_threads())
    sweep = data["bare_thread_sweep"]
    assert data["bare"]["threads"][0] == int(max(sweep, key=sweep.get))

    verdicts = [line for line in r.stdout.splitlines() if line.startswith("verdict:")]
    assert len(verdicts) == 2, r.stdout
    median = data["ratios"]["decode_ours_over_bare_median_of_rounds"]
    expected = "met" if median >= 0.95 else "NOT met"
    assert verdicts[0] == (f"verdict: decode ours/bare, median of per-round pairs = {median:.3f} "
                           f"(target >= 0.95: {expected})"), verdicts
    assert verdicts[1].startswith("verdict: TTFT turn 3 / turn 2 = "), verdicts
