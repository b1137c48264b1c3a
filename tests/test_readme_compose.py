"""The README's composition/checkpoint/serving example runs as written."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_composition_example_runs(tmp_path, monkeypatch):
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "jp.Input" in b]
    assert len(blocks) == 1, "README has no composition example"
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile("import juicepy as jp\nfrom juicepy import layers as L\n" + blocks[0], "README.md", "exec"), scope)
    x = np.ones((3, 64), np.float32)
    np.testing.assert_array_equal(scope["server"].transform(x), scope["net"].transform("numpy", x))
    assert not scope["net"].get_weights()["tied_linear.bias"].any()
