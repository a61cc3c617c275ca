"""The long fuzz run: schemathesis cases generated from the service's own OpenAPI schema, sent in-process
(ASGI) to every operation; each answer is checked as the test suite checks it (no 5xx, status codes, content
types, headers and bodies as documented, malformed input refused). Prints cases tried and failures, per
operation and in total; exits 1 on any failure.

    python -m benchmarks.fuzz                                  # a tiny random bundle and index of its own
    python -m benchmarks.fuzz --bundle bundles/r18 --index indexes/cifar10-train --cases 5000

Without --bundle the model's weights are random: fuzzing is about the HTTP layer, not the answers' quality.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from schemathesis import APIOperation, GenerationMode

from benchmarks.harness.fuzzing import fuzz_operation, load_schema
from service.app import create_app
from service.settings import Settings


def tiny_bundle(root: Path) -> tuple[Path, Path]:
    """A random-weight bundle and an index of 24 coloured images, as the tests make them."""
    from service.build_index import build
    # The tests' own factories, as tests.service.factories (a namespace package: tests/ is found from the
    # repository root like benchmarks/ is), so that there is no copy of make_run to drift from the trainer.
    from tests.service.factories import colour_images, make_run, write_folder
    from trainer.export import export

    run, _ = make_run(root / "run")
    export(run, root / "bundle")
    write_folder(root / "images", "train", *colour_images(6))
    build(str(root / "bundle"), [str(root / "images")], str(root / "index"))
    return root / "bundle", root / "index"


def run_slot(operation: APIOperation, mode: GenerationMode, budget: int, seed: int, tried: Counter[str],
             statuses: Counter[str], failures: dict[tuple[str, str], str]) -> bool:
    """Up to budget cases of one operation in one mode; True when it used them all (it may have more)."""
    label = f"{operation.label} ({mode.value})"
    started = time.perf_counter()
    ran = fuzz_operation(operation, mode, budget, seed, statuses, failures)
    tried[label] += ran
    if ran:
        print(f"{label:40s} {ran:6d} cases  {time.perf_counter() - started:6.1f} s", flush=True)
    return ran >= budget


def fuzz(settings_: Settings, cases: int, seed: int) -> int:
    schema = load_schema(create_app(settings_))
    operations = [result.ok() for result in schema.get_all_operations()]
    tried: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    failures: dict[tuple[str, str], str] = {}  # (operation, failure title) -> one reproduction
    # Valid and invalid input for every operation. Operations without parameters run out of distinct cases at
    # once; the rounds after the first share what is left among those that did not.
    slots = [(operation, mode) for operation in operations for mode in GenerationMode]
    round_ = 0
    while slots and sum(tried.values()) < cases:
        budget = math.ceil((cases - sum(tried.values())) / len(slots))
        slots = [slot for slot in slots if run_slot(*slot, budget, seed + round_, tried, statuses, failures)]
        round_ += 1
    total = sum(tried.values())
    print(f"\ncases tried: {total} over {len(operations)} operations, answers: "
          + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items())))
    print(f"failures: {len(failures)} distinct")
    for (label, title), curl in sorted(failures.items()):
        print(f"  {label}: {title}\n    {curl}")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="model bundle (default: a tiny random one)")
    parser.add_argument("--index", type=Path, help="index of that bundle (default: built with the tiny bundle)")
    parser.add_argument("--cases", type=int, default=2000, help="cases in all, spread evenly over the operations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle, index = (args.bundle, args.index) if args.bundle else tiny_bundle(Path(tmp))
        limits = Settings(bundle=bundle, index=index, max_images=4, max_request_bytes=200_000,
                          max_image_pixels=1_000_000)
        return fuzz(limits, args.cases, args.seed)


if __name__ == "__main__":
    sys.exit(main())
