"""Features computed once and kept: the second process's encoding time against the first's.

Two fresh Python processes, one after the other, fit the same ridge model on the same HER2ST sections with
``token_cache=TokenCache(<folder>)`` and then predict a held-out section through it. The first process
encodes every section and writes its token summaries into the folder; the second reads them. Printed per
process: the time of the encoding stage (fit and prediction), the whole run, the sections encoded and read,
and the folder's size; then the ratio. The predictions of the two processes must be identical.

    python benchmarks/feature_cache.py [--sections C2 C3 C4] [--backbone efficientnet_lite0] [--folder DIR]
    python benchmarks/feature_cache.py --smoke   # toy sections and the tiny encoder: checks the script itself
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(args) -> None:
    """One process: fit ridge through the cache, predict the last section through it; print a JSON record."""
    import warnings

    import numpy as np

    import sthist
    from sthist._core._timing import stage_times

    sthist.settings.progress = False
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        if args.smoke:
            sections = sthist.datasets.toy(3, grid=6, n_genes=12, random_state=0)
            options = {"backbone": "tiny", "patch_size_um": 64}
        else:
            sections = sthist.datasets.her2st(args.sections, check_registration=False)
            options = {"backbone": args.backbone}
    names = list(sections)
    train, held_out = {k: sections[k] for k in names[:-1]}, sections[names[-1]]
    cache = sthist.data.TokenCache(args.folder)
    loaded = time.perf_counter()
    stage_times(reset=True)
    model = sthist.tl.fit(train, method="ridge", token_cache=cache, **options)
    fit_encoding = stage_times(reset=True).get("encoding", float("nan"))
    predicted, _ = sthist.tl.predict(held_out, model, inplace=False, token_cache=cache, smooth_um=0)
    predict_encoding = stage_times(reset=True).get("encoding", float("nan"))
    np.save(os.path.join(args.folder, f"predicted-{args.child}.npy"), predicted.to_numpy())
    record = {
        "encoding_s": fit_encoding + predict_encoding,
        "fit_and_predict_s": time.perf_counter() - loaded,
        "process_s": time.perf_counter() - start,
        "encoded": cache.encoded,
        "read": cache.read,
        "spots": int(sum(s.tables["table"].n_obs for s in sections.values())),
    }
    print(json.dumps(record))


def folder_bytes(folder: str) -> int:
    """Bytes of the token files in ``folder``."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(folder)
        for name in files
        if name.endswith(".safetensors")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sections", nargs="+", default=["C2", "C3", "C4"], help="HER2ST sections; the last is predicted"
    )
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--folder", default=None, help="cache folder (default: a new temporary one)")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    import numpy as np

    folder = args.folder or tempfile.mkdtemp(prefix="sthist-feature-cache-")
    command = [
        sys.executable,
        __file__,
        "--folder",
        folder,
        "--backbone",
        args.backbone,
        "--sections",
        *args.sections,
    ]
    if args.smoke:
        command.append("--smoke")
    runs = []
    for run in ("first", "second"):
        output = subprocess.run([*command, "--child", run], capture_output=True, text=True, check=False)
        if output.returncode != 0:
            sys.exit(output.stderr[-3000:])
        runs.append(json.loads(output.stdout.strip().splitlines()[-1]))
    same = np.array_equal(
        *(np.load(os.path.join(folder, f"predicted-{run}.npy")) for run in ("first", "second"))
    )
    first, second = runs
    what = (
        "toy sections, tiny encoder" if args.smoke else f"HER2ST {' '.join(args.sections)}, {args.backbone}"
    )
    print(
        f"{what}: {first['spots']} spots; ridge fit on all but the last section, which is predicted; cache {folder}"
    )
    print("| process | encoding stage | fit + predict | whole process | sections encoded / read |")
    print("|---|---|---|---|---|")
    for name, run in zip(("first", "second"), runs, strict=True):
        print(
            f"| {name} | {run['encoding_s']:.2f} s | {run['fit_and_predict_s']:.2f} s | {run['process_s']:.1f} s | "
            f"{run['encoded']} / {run['read']} |"
        )
    print(
        f"second / first encoding stage: {second['encoding_s'] / first['encoding_s']:.3f} "
        f"({first['encoding_s'] / max(second['encoding_s'], 1e-9):.0f}× faster); folder {folder_bytes(folder) / 2**20:.2f} MiB; "
        f"identical predictions: {same}"
    )
    if not same or second["encoded"]:
        sys.exit("the second process encoded again or predicted differently")


if __name__ == "__main__":
    main()
