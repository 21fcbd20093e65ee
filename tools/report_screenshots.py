#!/usr/bin/env python3
"""The README's pictures of a report: three crops of a headless-Chromium screenshot.

  python3 tools/report_screenshots.py OUT/report.html --out docs/

writes report_top.png (overview and load), report_expert_parallel.png and
report_text_view_compare.png (text view to the end), 900 px wide, 256 colours.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moe_profiler.verification import report_browser


def top_of(selector: str):
    return lambda page: page.eval_on_selector(
        selector, "e => e.getBoundingClientRect().top + window.scrollY"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("report", type=Path, help="report.html written by analyze_routes.py")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "page.png"
        visit = report_browser.visit(
            args.report,
            shot,
            actions=[top_of("#ep"), top_of("#coactivation"), top_of(".textview")],
        )
        if visit.errors or visit.requests or visit.broken_images:
            sys.exit(f"report_screenshots.py: the page did not render cleanly: {visit}")
        page = Image.open(shot).convert("RGB")
    ep, coactivation, text = (int(y) for y in visit.results)
    crops = {
        "report_top.png": (0, ep - 10),
        "report_expert_parallel.png": (ep - 10, coactivation - 10),
        "report_text_view_compare.png": (text - 60, page.size[1]),
    }
    for name, (top, bottom) in crops.items():
        crop = page.crop((0, top, page.size[0], bottom))
        crop = crop.resize((900, round(crop.size[1] * 900 / crop.size[0])), Image.LANCZOS)
        crop.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            args.out / name, optimize=True
        )
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
