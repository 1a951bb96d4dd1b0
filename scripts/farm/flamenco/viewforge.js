// SPDX-License-Identifier: GPL-3.0-or-later
//
// Flamenco custom job type "Viewforge Batch": one task per input of a viewforge batch, each
// running `blender -b --python-expr` that calls the Viewforge extension's `viewforge batch`
// for that input alone (--only NAME). Outputs, resume records and the skipping of finished
// inputs are the local batch's, so a re-queued job redoes only what is missing.
//
// Install: copy this file to the `scripts/` folder next to the Flamenco Manager executable and
// restart the Manager; the job type appears in Blender's Flamenco add-on. The workers need
// Blender with the Viewforge extension enabled, and the input and output folders on shared
// storage (the Manager's two-way variables map them per platform).

const JOB_TYPE = {
  label: "Viewforge Batch",
  description: "Posed sets and images to textured meshes, one task per input (viewforge batch --only NAME)",
  settings: [
    { key: "input_dir", type: "string", subtype: "dir_path", required: true,
      description: "Folder of posed sets (sub-folders with transforms.json), folders of photos and images" },
    { key: "output_dir", type: "string", subtype: "dir_path", required: true,
      description: "Output folder (its parent must exist): one <name>.<format> per input" },
    { key: "items", type: "string", required: true,
      description: "Input names, comma-separated (first column of: viewforge batch INPUT -o OUTPUT --list)" },
    { key: "quality", type: "string", choices: ["draft", "standard", "high"], default: "standard", required: true },
    { key: "format", type: "string", choices: ["glb", "ply"], default: "glb", required: true },
    { key: "device", type: "string", choices: ["auto", "cpu", "cuda", "mps"], default: "auto", required: true },
    { key: "extra_args", type: "string", default: "", description: "More viewforge batch options, space-separated" },
    { key: "module", type: "string", default: "bl_ext.user_default.viewforge", visible: "submission",
      description: "Python module of the Viewforge extension in Blender (bl_ext.<repository>.viewforge)" },
  ],
};

// The --python-expr of one task: viewforge's command line inside Blender, its exit code Blender's.
function pythonExpr(module, argv) {
  return (
    "import importlib, sys; " +
    `cli = importlib.import_module(${JSON.stringify(module + ".cli")}); ` +
    `sys.exit(cli.main(${JSON.stringify(argv)}))`
  );
}

function batchArgs(settings, name) {
  const argv = ["batch", settings.input_dir, "-o", settings.output_dir, "--only", name,
                "--quality", settings.quality, "--format", settings.format, "--device", settings.device];
  const extra = (settings.extra_args || "").trim();
  return extra ? argv.concat(extra.split(/\s+/)) : argv;
}

function compileJob(job) {
  const settings = job.settings;
  const names = String(settings.items).split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (names.length === 0) {
    throw "no input names in 'items'; list them with: viewforge batch INPUT -o OUTPUT --list";
  }
  for (const name of names) {
    const task = author.Task(`viewforge-${name}`, "blender");
    const command = author.Command("blender-render", {
      exe: "{blender}",
      exeArgs: "{blenderArgs}",
      argsBefore: [],
      blendfile: "",
      args: ["--python-expr", pythonExpr(settings.module, batchArgs(settings, name))],
    });
    task.addCommand(command);
    job.addTask(task);
  }
}
