"""bench/gpu.py (the prepared GPU check) runs its code path on the CPU at tiny size (--dry-run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_generates_with_both_samplers_and_prints_one_table(tmp_path, capsys):
    gpu = _load()
    out = tmp_path / "rows.json"
    rc = gpu.main(["--dry-run", "--sections", "b,c", "--lego", str(tmp_path / "no-lego"), "--json", str(out)])
    assert rc == 0
    rows = {r["check"]: r for r in json.loads(out.read_text())}
    assert rows["b reconstruct lego"]["result"] == "skipped" and "not found" in rows["b reconstruct lego"]["detail"]
    for method, evals in (("aware 2", 4), ("oneshot 3", 6)):  # guided: 2 evaluations per step
        r = rows[f"c generate {method}"]
        assert r["result"] == "ok" and r["device"] == "cpu"
        assert r["detail"].startswith(f"{evals} evals") and " faces" in r["detail"]
    table = capsys.readouterr().out
    assert table.count("| c generate") == 2 and "| check | device | seconds | result | detail |" in table


def test_gpu_run_without_cuda_says_so():
    gpu = _load()
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu.main([])
