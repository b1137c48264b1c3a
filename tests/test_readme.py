"""The README's API example runs as written and trains a classifier."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_api_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    assert len(blocks[0].strip().splitlines()) <= 15
    exec(compile(blocks[0], "README.md", "exec"), {})
    accuracy = float(capsys.readouterr().out.split("test accuracy")[1])
    assert accuracy > 0.9
