"""edgevit.bench: one latency harness and one report format for the host, Android (adb), Jetson (ssh) and iOS.

    report = bench(["out/tnt_ti/executorch-fp32", "out/tnt_ti/tflite-fp32"], device="host", iters=50)
    write_report(report, "bench-out")            # report.json, report.csv, report.md, latency.png, pareto.png
    print(compare_markdown(load_report("a"), load_report("b")))
"""
from .harness import Device, bench
from .report import compare_markdown, compare_reports, load_report, markdown, write_report

__all__ = ["Device", "bench", "compare_markdown", "compare_reports", "load_report", "markdown", "write_report"]
