"""What ``nnUNetv2_evaluate_missing`` spends checking its inputs before it writes anything.

On BraTS-size synthetic test cases (``nnUNetv2_synthetic_brats --geometry brats``: 240 x 240 x 155
at 1 mm, four modalities and a label), per case:

- the test set's content digest (``records.test_set_digest``: SHA-256 of every file);
- the header pre-pass (``check_inputs`` with ``check_data=False``: grids and labels present);
- the full pre-pass (``check_inputs``: every file decoded, finite values, label values);
- the evaluation's own read of a case, for scale.

    python benchmarks/benchmark_input_checks.py --work /tmp/bench_checks [--num-test 8] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

DATASET_ID = 777
DATASET_NAME = "Dataset777_SyntheticBraTS"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--num-test", type=int, default=8)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from nnunet_missingmod.inference.cases import (attach_labels, defined_label_values, find_cases, read_case,
                                                   read_label)
    from nnunet_missingmod.inference.evaluate_missing import check_inputs
    from nnunet_missingmod.inference.records import test_set_digest
    from nnunet_missingmod.modalities import Modalities

    root = os.path.join(args.work, DATASET_NAME)
    if not os.path.isdir(root):
        subprocess.run(["nnUNetv2_synthetic_brats", "-d", str(DATASET_ID), "-n", "1", "--num-test",
                        str(args.num_test), "--geometry", "brats", "-o", args.work, "-np", "2"], check=True)
    dataset_json = json.load(open(os.path.join(root, "dataset.json")))
    modalities = Modalities.from_dataset_json(dataset_json)
    cases = find_cases(os.path.join(root, "imagesTs"), dataset_json["file_ending"], modalities)
    attach_labels(cases, os.path.join(root, "labelsTs"), dataset_json["file_ending"])
    files = {c: [*case.files.values(), case.label_file] for c, case in cases.items()}
    megabytes = sum(os.path.getsize(p) for paths in files.values() for p in paths) / 1e6 / len(cases)
    labels, reader = defined_label_values(dataset_json), SimpleITKIO()
    results = {"cases": len(cases), "megabytes_per_case": round(megabytes, 1), "seconds_per_case": {}}

    def per_case(function) -> float:
        start = time.perf_counter()
        function()
        return round((time.perf_counter() - start) / len(cases), 3)

    for threads in args.threads:
        results["seconds_per_case"][f"{threads} threads"] = {
            "digest": per_case(lambda: test_set_digest(files, threads)),
            "headers": per_case(lambda: check_inputs(cases, modalities, reader, labels, False, threads)),
            "full": per_case(lambda: check_inputs(cases, modalities, reader, labels, True, threads))}

    def read_all():
        for case in cases.values():
            raw, _, _ = read_case(case, modalities, reader)
            read_label(case, reader, raw.shape[1:])
    results["seconds_per_case"]["evaluation's own read"] = per_case(read_all)
    print(json.dumps(results, indent=1))
    with open(os.path.join(args.work, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
