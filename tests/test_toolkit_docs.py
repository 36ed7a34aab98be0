"""docs/toolkit.md runs as written: its python blocks, in order, in one namespace (in a temporary
folder: the page writes PNGs), and what it states holds."""
import pathlib
import re

import numpy as np


def test_toolkit_page_runs(tmp_path, monkeypatch):
    text = (pathlib.Path(__file__).parents[1] / "docs" / "toolkit.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 5, len(blocks)
    monkeypatch.chdir(tmp_path)
    env = {}
    for k, code in enumerate(blocks):
        exec(compile(code, f"docs/toolkit.md, python block {k}", "exec"), env)
    assert env["acc"] >= 0.75, env["acc"]                       # trained: chance is 0.5
    assert set(env["rates"]) == {1, 3} and 0.05 <= float(np.mean(env["rates"][1])) <= 0.3 + 0.05
    assert (tmp_path / "hidden_raster.png").stat().st_size > 0 and (tmp_path / "rates.png").stat().st_size > 0
    assert env["frames"].shape == (4, 2, 2, 3) and env["frames"].sum(axis=(1, 2, 3)).tolist() == [1, 2, 0, 1]
    assert np.argwhere(np.asarray(env["lat"])).tolist() == [[0, 0], [2, 1]] and env["d"].tolist() == [0, 1, 0, 1]


def test_readme_quick_start_runs(capsys):
    """The README's quick start (an encoder, a loss, firing_rates) trains: the loss falls far below
    chance (0.69; it prints ~0.002, the test asks < 0.2) and the hidden LIF fires."""
    text = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"## Quick start.*?```python\n(.*?)```", text, re.S).group(1)
    assert "encode.rate" in code and "losses." in code and "activity.firing_rates" in code
    env = {}
    exec(compile(code, "README.md quick start", "exec"), env)
    assert float(env["l"]) < 0.2, float(env["l"])
    rates = env["activity"].firing_rates(env["model"], env["states"], env["x"][0], env["key"])
    assert list(rates) == [1] and 0.02 < float(rates[1]) < 0.98
    assert "planned path" in capsys.readouterr().out
