"""Render-farm templates (scripts/farm/): the Open Job Description job template is valid, makes
one task per input, and runs one posed set locally with ``openjd run``; the Flamenco job type
compiles (node, with Flamenco's ``author`` API mocked) to one ``blender -b --python-expr`` task per
input whose expression calls ``viewforge batch --only NAME`` with arguments the CLI accepts."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from viewforge import cli

from helpers import sphere_posed_set

REPO = Path(__file__).resolve().parents[1]
OPENJD = REPO / "scripts" / "farm" / "viewforge-batch.openjd.yaml"
FLAMENCO = REPO / "scripts" / "farm" / "flamenco" / "viewforge.js"


def test_openjd_template_one_task_per_input():
    pytest.importorskip("openjd.model")
    import yaml
    from openjd.model import StepParameterSpaceIterator, create_job, decode_job_template, preprocess_job_parameters

    template = decode_job_template(template=yaml.safe_load(OPENJD.read_text()))
    params = preprocess_job_parameters(job_template=template, job_parameter_values={
        "InputDir": "/data/in", "OutputDir": "/data/out", "ItemCount": "3", "Quality": "draft"},
        job_template_dir=OPENJD.parent, current_working_dir=Path.cwd(), environment_templates=[])  # fmt: skip
    job = create_job(job_template=template, job_parameter_values=params)
    assert job.name == "viewforge batch /data/in"
    (step,) = job.steps
    shards = [t["Shard"].value for t in StepParameterSpaceIterator(space=step.parameterSpace)]
    assert shards == ["1", "2", "3"]
    script = step.script.embeddedFiles[0].data
    # shard i of N = ItemCount holds exactly the i-th input (tests/test_batch.py checks --shard)
    assert '-o "{{Param.OutputDir}}"' in script and "--shard {{Task.Param.Shard}}/{{Param.ItemCount}}" in script


def _openjd() -> str | None:
    exe = Path(sys.executable).with_name("openjd")
    return str(exe) if exe.exists() else shutil.which("openjd")


def test_openjd_run_locally(tmp_path):
    exe = _openjd()
    if exe is None:
        pytest.skip("openjd-cli is not installed")
    (tmp_path / "in").mkdir()
    sphere_posed_set(tmp_path / "in" / "ball", n=5, size=16)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this tree's viewforge in the session
    r = subprocess.run([exe, "run", str(OPENJD), "-p", f"InputDir={tmp_path / 'in'}", "-p", f"OutputDir={out}",
                        "-p", "ItemCount=1", "-p", "Quality=draft", "-p", "Format=ply", "-p", "Device=cpu",
                        "-p", "ExtraArgs=--resolution 16 --iterations 10", "-p", f"Viewforge={sys.executable} -m viewforge"],
                       capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "Session ended successfully" in r.stdout and "1 of 1 jobs succeeded" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == [".viewforge-batch", "ball.ply"]
    assert (out / ".viewforge-batch" / "ball.ply.json").is_file()


_MOCK = r"""
const fs = require("fs");
const tasks = [];
global.author = {
  Task: (name, type) => ({ name, type, commands: [], addCommand(c) { this.commands.push(c); } }),
  Command: (type, params) => ({ type, params }),
};
eval(fs.readFileSync(process.argv[2], "utf8") + "\nglobal.JOB_TYPE = JOB_TYPE; global.compileJob = compileJob;");
const settings = {};
for (const s of JOB_TYPE.settings) if (s.default !== undefined) settings[s.key] = s.default;
Object.assign(settings, JSON.parse(process.argv[3]));
compileJob({ settings, addTask: (t) => tasks.push(t) });
let error = null;
try { compileJob({ settings: { ...settings, items: " , " }, addTask: () => {} }); } catch (e) { error = String(e); }
console.log(JSON.stringify({ label: JOB_TYPE.label, keys: JOB_TYPE.settings.map((s) => s.key), tasks, error }));
"""


def test_flamenco_job_type_compiles(tmp_path):
    text = FLAMENCO.read_text()
    node = shutil.which("node")
    if node is None:  # a structural check only
        assert "const JOB_TYPE" in text and "function compileJob(job)" in text and '"--python-expr"' in text
        pytest.skip("node is not installed: only a structural check")
    mock = tmp_path / "mock.js"
    mock.write_text(_MOCK)
    settings = {"input_dir": "/farm/in", "output_dir": "/farm/out", "items": "my ball, cat", "quality": "draft",
                "extra_args": "--iterations 100"}
    r = subprocess.run([node, str(mock), str(FLAMENCO), json.dumps(settings)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["label"] == "Viewforge Batch" and {"input_dir", "output_dir", "items"} <= set(got["keys"])
    assert "no input names" in got["error"]
    assert [t["name"] for t in got["tasks"]] == ["viewforge-my ball", "viewforge-cat"]
    for task, name in zip(got["tasks"], ["my ball", "cat"]):
        (cmd,) = task["commands"]
        assert task["type"] == "blender" and cmd["type"] == "blender-render" and cmd["params"]["exe"] == "{blender}"
        args = cmd["params"]["args"]
        assert args[0] == "--python-expr"
        tree = ast.parse(args[1])  # valid Python: import the extension's cli, exit with cli.main(argv)
        call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "main")
        argv = ast.literal_eval(call.args[0])
        assert "bl_ext.user_default.viewforge.cli" in args[1]
        assert argv[:6] == ["batch", "/farm/in", "-o", "/farm/out", "--only", name] and argv[-2:] == ["--iterations", "100"]
        ns = cli.build_parser().parse_args(argv)  # the CLI accepts them
        assert ns.only == [name] and ns.quality == "draft" and ns.iterations == 100 and ns.format == "glb"
