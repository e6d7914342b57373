"""The mixing line: routing whole requests between the two models at a route's cost, beside every route."""

import json
import math
import subprocess
import sys

import pytest

from stitchllm.eval.mixing import large_share, with_mixing_line

SMALL = {"name": "small", "cost": 0.32, "ppl": 12.0, "top1_agree": 0.7, "kl": 0.5}
LARGE = {"name": "large", "cost": 1.0, "ppl": 8.0, "top1_agree": 1.0, "kl": 0.0}


def test_mixing_line_is_the_geometric_mix_at_the_routes_cost():
    route = {"name": "L16-S14", "cost": 0.66, "ppl": 9.0, "top1_agree": 0.8, "kl": 0.3}
    rows = {r["name"]: r for r in with_mixing_line([SMALL, route, LARGE])}
    assert large_share(0.66, 0.32, 1.0) == pytest.approx(0.5)
    assert rows["L16-S14"]["mix_ppl"] == pytest.approx(math.sqrt(12.0 * 8.0))  # half of each: exp(mean log ppl)
    assert rows["L16-S14"]["mix_top1"] == pytest.approx(0.85)
    assert rows["L16-S14"]["mix_kl"] == pytest.approx(0.25)
    assert rows["L16-S14"]["mix_margin"] == pytest.approx(math.sqrt(96.0) / 9.0 - 1)  # 9.80 vs 9.0: above the line
    assert rows["small"]["mix_ppl"] == pytest.approx(12.0) and rows["large"]["mix_ppl"] == pytest.approx(8.0)
    assert rows["small"]["mix_margin"] == pytest.approx(0.0)


def test_rows_without_both_models_have_no_mixing_line():
    assert with_mixing_line([SMALL]) == [SMALL]


def test_eval_all_routes_reports_the_mixing_line_and_plots_it(tiny_catalog, tiny_parent_dir, tiny_sibling, tmp_path):
    _, stitch_dir, _, _ = tiny_catalog
    text = tmp_path / "t.txt"
    text.write_text("def add(a, b):\n    \"\"\"Return the sum of a and b.\"\"\"\n    return a + b\n" * 20)
    plot = tmp_path / "frontier.png"
    result = subprocess.run([sys.executable, "-m", "stitchllm.cli", "eval", "--text", str(text), "--routes", "all",
                             "--json", "--window", "64", "--model", str(tiny_parent_dir), "--small",
                             str(tiny_sibling[0]), "--stitches", str(stitch_dir), "--plot", str(plot)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)["routes"]}
    assert {"small", "large", "L2-S1", "L3-S1"} <= set(rows)
    small, large = rows["small"], rows["large"]
    for r in rows.values():
        share = (r["cost"] - small["cost"]) / (large["cost"] - small["cost"])
        expected = math.exp(share * math.log(large["ppl"]) + (1 - share) * math.log(small["ppl"]))
        assert r["mix_ppl"] == pytest.approx(expected, rel=1e-9)
        assert r["mix_margin"] == pytest.approx(r["mix_ppl"] / r["ppl"] - 1, rel=1e-9)
    assert plot.stat().st_size > 10_000
