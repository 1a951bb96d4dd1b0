"""Benchmark: input preparation (engine/mvgen/prep.py) on every image in ../shared/data/single_image.

    .venv/bin/python bench/prep.py                       # the table
    .venv/bin/python bench/prep.py --out /tmp/prep       # + the prepared RGBA PNGs (and masks)
    .venv/bin/python bench/prep.py --json rows.json --size 320 --fill 0.8

Columns (also the --json keys): file, input_size ("WxH"), has_alpha, method ("alpha" | "rembg" |
"border"), object_fraction (object pixels / image pixels), bbox ("x0,y0,x1,y1" in input pixels,
exclusive ends), background (estimated background colour(s), 0-255, border matting only), seconds.
A file that fails gets its error in the method column.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO.parent) not in sys.path:
    sys.path.insert(0, str(REPO.parent))

DATA = REPO.parent / "shared" / "data" / "single_image"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="folder of images (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=None, help="write the prepared RGBA images here")
    ap.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list")
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--fill", type=float, default=0.8)
    ap.add_argument("--no-rembg", action="store_true", help="never use rembg even when installed")
    args = ap.parse_args(argv)

    from viewforge.engine.errors import ViewforgeError
    from viewforge.engine.images import save_png
    from viewforge.engine.mvgen.prep import PrepConfig, prepare

    config = PrepConfig(size=args.size, fill=args.fill, use_rembg=False if args.no_rembg else "auto")
    files = sorted(p for p in args.data.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        print(f"no images in {args.data}", file=sys.stderr)
        return 1
    rows = []
    for path in files:
        try:
            r = prepare(path, config)
        except ViewforgeError as exc:
            rows.append({"file": path.name, "input_size": "", "has_alpha": None, "method": f"error: {exc}",
                         "object_fraction": None, "bbox": "", "background": "", "seconds": None})
            continue
        rows.append({
            "file": path.name,
            "input_size": f"{r.input_size[0]}x{r.input_size[1]}",
            "has_alpha": r.has_alpha,
            "method": r.method,
            "object_fraction": round(r.object_fraction, 4),
            "bbox": ",".join(str(v) for v in r.bbox),
            "background": " ".join("(" + ",".join(str(round(255 * c)) for c in b) + ")" for b in r.background),
            "seconds": round(r.seconds, 3),
        })
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            rgba = r.image.rgba
            save_png(args.out / f"{path.stem}.png", rgba[..., :3], rgba[..., 3])
            save_png(args.out / f"{path.stem}_mask.png", r.alpha)
            save_png(args.out / f"{path.stem}_on_grey.png", r.image.on_background((0.5, 0.5, 0.5)))
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(row[c])) for row in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
