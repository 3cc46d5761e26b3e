"""``csfm-edge bench-report``: markdown tables and PNG plots from one or more ``bench`` JSON files.

One table per model size puts machines side by side; the plots show throughput against batch per
machine and backend, latency percentiles, and accuracy against speed per precision (matplotlib, the
``plot`` extra).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from csfm_edge.errors import CsfmError, InputFileError
from csfm_edge.fileio import check_output, check_output_folder, write_atomically


def machine_label(machine: dict) -> str:
    gpu = (machine.get("gpu") or {}).get("name")
    return f"{machine.get('hostname', '?')} ({gpu or machine.get('cpu', '?')}, {machine.get('cores', '?')} cores)"


def load_results(paths: list[Path]) -> list[dict]:
    """All result rows, each tagged with its machine's label."""
    rows = []
    for path in paths:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f"{path} is not a readable bench JSON ({exc})") from None
        if "results" not in record or "machine" not in record:
            raise InputFileError(f"{path} is not a csfm-edge bench JSON (no machine/results)")
        label = machine_label(record["machine"])
        rows += [{**r, "machine": label, "machine_record": record["machine"]} for r in record["results"]]
    if not rows:
        raise CsfmError("no benchmark results in the given files")
    return rows


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def machines_table(rows: list[dict]) -> str:
    """Each machine's CPU, the ISA flags that pick kernels, and its own measured matrix-product limits."""
    out = ["## Machines\n", "Limits measured on each machine (best of three 2048^3 products; TOP/s for int8).\n",
           "| machine | CPU | ISA flags | fp32 TFLOP/s | bf16 TFLOP/s | int8 TOP/s |", "|---|---|---|---|---|---|"]
    seen = {}
    for r in rows:
        seen.setdefault(r["machine"], r.get("machine_record") or {})
    for label, machine in sorted(seen.items()):
        peaks = machine.get("cpu_peak_tflops") or {}
        flags = " ".join(f for f in machine.get("cpu_flags") or [] if f.startswith(("amx", "avx512", "avx_vnni")))
        out.append(f"| {label} | {machine.get('cpu', '?')} | {flags or '-'} | {_fmt(peaks.get('fp32'), 3)} | "
                   f"{_fmt(peaks.get('bf16'), 3)} | {_fmt(peaks.get('int8'), 3)} |")
    return "\n".join(out) + "\n"


def markdown_tables(rows: list[dict]) -> str:
    out = [machines_table(rows)]
    machines = sorted({r["machine"] for r in rows})
    for size in sorted({r["size"] for r in rows}):
        sized = [r for r in rows if r["size"] == size]
        out.append(f"## CSFM {size}\n")
        out.append("Throughput in windows/s (median latency in ms); min feature cosine vs fp32 PyTorch on real "
                   "recordings.\n")
        out.append("| target | precision | lead set | batch | " + " | ".join(machines) + " | min cosine |")
        out.append("|---|---|---|---|" + "---|" * len(machines) + "---|")
        keys = sorted({(r["label"], r["precision"], r["lead_set"], r["batch"]) for r in sized},
                      key=lambda k: (k[2], k[3], k[0]))
        for label, precision, lead_set, batch in keys:
            cells, cosine = [], None
            for machine in machines:
                match = [r for r in sized if (r["label"], r["precision"], r["lead_set"], r["batch"], r["machine"])
                         == (label, precision, lead_set, batch, machine)]
                if match:
                    r = match[0]
                    cells.append(f"{r['throughput']['windows_per_s']:.1f} ({r['latency_ms']['median_ms']:.1f} ms)")
                    cosine = r["accuracy_min_cosine_vs_fp32"] if cosine is None else cosine
                else:
                    cells.append("-")
            out.append(f"| {label} | {precision} | {lead_set} | {batch} | " + " | ".join(cells)
                       + f" | {_fmt(cosine, 5)} |")
        out.append("")
        out.append("| machine | target | lead set | batch | p50 ms | p90 ms | p99 ms | preprocess share | "
                   "TFLOP/s | % of peak | energy mJ/window |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in sorted(sized, key=lambda r: (r["machine"], r["lead_set"], r["batch"], r["label"])):
            lat = r["latency_ms"]
            fraction = r["fraction_of_peak"]
            out.append(f"| {r['machine']} | {r['label']} | {r['lead_set']} | {r['batch']} | {lat['median_ms']:.2f} | "
                       f"{lat['p90_ms']:.2f} | {lat['p99_ms']:.2f} | {r['preprocess_share'] * 100:.1f}% | "
                       f"{r['achieved_tflops']:.3f} | {'-' if fraction is None else f'{fraction * 100:.1f}%'} | "
                       f"{_fmt(r['energy_mj_per_window'])} |")
        out.append("")
    return "\n".join(out)


def plots(rows: list[dict], out_dir: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CsfmError("plots need matplotlib: pip install 'csfm-edge[plot]'") from None
    written = []
    for size in sorted({r["size"] for r in rows}):
        sized = [r for r in rows if r["size"] == size]
        lead_sets = sorted({r["lead_set"] for r in sized})
        fig, axes = plt.subplots(1, len(lead_sets), figsize=(6.5 * len(lead_sets), 6.5), squeeze=False)
        for ax, lead_set in zip(axes[0], lead_sets):
            series = defaultdict(dict)  # a later result for the same machine, target and batch replaces an earlier
            for r in sized:
                if r["lead_set"] == lead_set:
                    name = f"{r['label']} - {r['machine'].split(' (')[0]}"
                    series[name][r["batch"]] = r["throughput"]["windows_per_s"]
            batches = sorted({b for points in series.values() for b in points})
            for name, points in sorted(series.items()):
                ax.plot(sorted(points), [points[b] for b in sorted(points)], marker="o", label=name)
            ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="windows / s",
                   title=f"CSFM {size}, {lead_set}: throughput")
            ax.set_xticks(batches, [str(b) for b in batches])
            ax.minorticks_off()
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
        written.append(_save(fig, out_dir / f"throughput_{size}.png"))

        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(sized)), 4.5))
        labels = [f"{r['label']}\n{r['lead_set']} b{r['batch']}" for r in sized]
        x = range(len(sized))
        for key, offset in (("median_ms", -0.25), ("p90_ms", 0), ("p99_ms", 0.25)):
            ax.bar([i + offset for i in x], [r["latency_ms"][key] for r in sized], width=0.25, label=key[:-3])
        ax.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=7)
        ax.set(yscale="log", ylabel="latency (ms)", title=f"CSFM {size}: latency percentiles")
        ax.legend()
        written.append(_save(fig, out_dir / f"latency_{size}.png"))

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for precision in sorted({r["precision"] for r in sized}):
            points = [r for r in sized if r["precision"] == precision and r["accuracy_min_cosine_vs_fp32"] is not None]
            ax.scatter([r["throughput"]["windows_per_s"] for r in points],
                       [1 - r["accuracy_min_cosine_vs_fp32"] + 1e-9 for r in points], label=precision)
        ax.set(xscale="log", yscale="log", xlabel="windows / s", ylabel="1 - min cosine vs fp32 (lower is better)",
               title=f"CSFM {size}: accuracy vs speed")
        ax.tick_params(axis="x", which="minor", labelbottom=False)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / f"accuracy_speed_{size}.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def build_report(paths: list[Path], out_dir: Path, force: bool = False) -> list[Path]:
    check_output_folder(out_dir)
    report = out_dir / "report.md"
    if out_dir.is_dir():  # a new folder holds nothing to protect
        check_output(report, protected=list(paths), force=force)
    rows = load_results(paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(report, ("# csfm-edge benchmark report\n\n" + markdown_tables(rows)).encode())
    return [report, *plots(rows, out_dir)]
