"""Body of the job worker process (see :class:`viewforge.engine.jobs.JobProcess`).

The parent starts ``runpy.run_module("<package>.engine.worker", init_globals={"WORKER_ARGS": ...},
run_name="__viewforge_worker__")`` in a spawned process; importing this module normally does
nothing. It never imports bpy.

``python -m viewforge.engine.worker`` runs a job sent as JSON on stdin, for a parent in another
Python (:class:`viewforge.engine.jobs.SubprocessJob`: Blender with an engine Python).
"""

from __future__ import annotations

if __name__ == "__viewforge_worker__":
    from .jobs import worker_main

    worker_main(*WORKER_ARGS)  # type: ignore[name-defined]  # noqa: F821  (set by runpy's init_globals)

elif __name__ == "__main__":
    from .jobs import stdio_worker_main

    stdio_worker_main()
