"""A smoke run of benchmarks/uncertainty_cost.py with tiny settings: every row of its tables is filled."""

import json
from project_module import load_module



def test_tiny_run_fills_the_tables(tmp_path, capsys):
    bench = load_module("benchmarks/uncertainty_cost.py")
    out = tmp_path / "out.json"
    bench.main(["--n-train", "4", "--n-test", "8", "--epochs", "2", "--channels", "4", "--md-steps", "4",
                "--sample-every", "2", "--nll-epochs", "2", "--kinds", "shallow-all", "shallow-nll", "llpr",
                "--json", str(out)])
    result = json.loads(out.read_text())
    assert set(result["quality"]) == {"committee", "shallow-all", "shallow-nll", "llpr"}
    for row in result["quality"].values():
        assert row["train_s"] > 0 and -1 <= row["spearman"] <= 1 and row["k"] > 0 and 0 <= row["coverage"] <= 1
    (md,) = result["md"]
    assert md["atoms"] == 32 and all(v > 0 for v in md.values())
    printed = capsys.readouterr().out
    assert "| committee |" in printed and "| 32 | " in printed
    assert "shallow, every step" in printed and "llpr, every step" in printed
