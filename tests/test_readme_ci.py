"""CI runs the README's test command as written, so the two cannot drift apart."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    commands = [c.strip() for c in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)]
    test_command = next(c for c in commands if c.endswith("&& pytest"))
    assert "plot" in test_command, "the README's test command should install the plot extra"
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
