"""Pass/fail/skip counts per test function from the junit XML files of run.sh."""

import collections
import sys
import xml.etree.ElementTree as ET


def summarize(path: str) -> None:
    root = ET.parse(path).getroot()
    counts = collections.defaultdict(collections.Counter)
    for case in root.iter("testcase"):
        function = case.get("name").split("[")[0]
        status = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                status = "failed"
            elif child.tag == "skipped":
                status = "skipped"
        for key in (function, "TOTAL"):
            counts[key][status] += 1
            counts[key]["time"] += float(case.get("time"))
    print(path)
    for function, c in counts.items():
        n = c["passed"] + c["failed"] + c["skipped"]
        print(
            f"  {function:38s} pass {c['passed']:3d} fail {c['failed']:3d} "
            f"skip {c['skipped']:3d} / {n:3d}  {c['time']:7.1f}s"
        )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        summarize(arg)
