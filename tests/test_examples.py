"""The example programs run as a user would run them, and the README's example works."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_guided_sampling_example_runs():
    done = subprocess.run([sys.executable, str(ROOT / "python" / "guided_sampling_example.py"), "--steps", "5"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("request ") for line in lines) == 3
    for line in lines:
        if line.startswith("request "):
            assert len(re.findall(r"\d+", line.split("tokens")[1])) == 5


def test_readme_example_runs():
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (namespace["out"].tokens < 32000).all()
    assert namespace["logprobs"].shape == (4, 32064)
