"""Coverage-guided fuzzing with atheris, for a fixed time budget (~27 s in all).

Each harness in tests/fuzz runs in its own subprocess (a crash there cannot
take pytest down, and libFuzzer writes the crashing input as a file), starting
from the committed seed corpus in tests/fuzz/corpus/<name>; new corpus entries
go to a temporary directory so the repository is never written. A failure
reports the harness' output and the crashing input in hex: replay it with
``python tests/fuzz/fuzz_<name>.py <crash-file>``.

Budgets can be raised for a long run: FUZZ_SECONDS=600 pytest tests/unit/test_atheris.py
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris is installed by `make test` (TEST_PIPS)")

ROOT = Path(__file__).resolve().parents[2]
FUZZ = ROOT / "tests" / "fuzz"
SCALE = float(os.environ.get("FUZZ_SECONDS", "0")) or None


@pytest.mark.slow
@pytest.mark.parametrize("harness, corpus, seconds, env", [
    ("fuzz_codec.py", "codec", 7, {}),
    ("fuzz_session.py", "session", 10, {}),
    ("fuzz_session.py", "session", 10, {"FUZZ_REAL_DATAPATH": "1"}),
], ids=["codec", "session-model", "session-datapath"])
def test_atheris_harness_finds_nothing(tmp_path, harness, corpus, seconds, env):
    budget = int(SCALE or seconds)
    work = tmp_path / "corpus"
    work.mkdir()
    cmd = [sys.executable, str(FUZZ / harness), f"-max_total_time={budget}", "-timeout=10",
           "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
           str(work), str(FUZZ / "corpus" / corpus)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget + 120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    crashes = [p for p in tmp_path.iterdir() if p.is_file() and p.name.split("-")[0] in
               ("crash", "leak", "timeout", "oom", "slow-unit")]
    if proc.returncode != 0 or crashes:
        inputs = "\n".join(f"{c.name}: {c.read_bytes().hex()}" for c in crashes)
        pytest.fail(f"{harness} {env} failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}\n"
                    f"crashing inputs:\n{inputs}")
    runs = [line for line in proc.stderr.splitlines() if "number_of_executed_units" in line]
    assert runs and int(runs[-1].split(":")[-1]) > 0, proc.stderr[-2000:]
