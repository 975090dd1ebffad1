"""bench/results/latest.png from latest.json (bench venv: matplotlib lives there, not in the project venv).

Left: overhead per call over the floor (p50 bar, p95 tick), in-process and HTTP, both fake variants.
Right: HTTP requests/s at concurrency 1, 16, 64 against the instant fake and the 50 ms fake.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

RESULTS = Path(__file__).resolve().parents[1] / "results"

from bench.compare.common import emit  # noqa: E402
from bench.compare.report import LABELS  # noqa: E402

COLORS = {"instant": "#4C72B0", "50ms": "#DD8452"}


def plain(name: str) -> str:
    return LABELS[name].replace("**", "").replace("`", "")


def main() -> None:
    data = json.loads((RESULTS / "latest.json").read_text())
    summary = data["summary"]
    machine = data["machine"]
    fig, (left, right, right2) = plt.subplots(
        1, 3, figsize=(17, 6.2), gridspec_kw={"width_ratios": [1.5, 1, 1]}
    )

    contenders = [row["name"] for row in summary["instant"] if not row["name"].startswith(("floor", "fake"))]
    width = 0.38
    for offset, variant in enumerate(("instant", "50ms")):
        rows = {row["name"]: row for row in summary[variant]}
        ys = [index + (offset - 0.5) * width for index in range(len(contenders))]
        # A contender with no successful call has no overhead: drawn as 0, labelled "failed".
        nan = {"p50": float("nan"), "p95": float("nan")}
        p50 = [(rows[name]["overhead_ms"] or nan)["p50"] for name in contenders]
        p95 = [(rows[name]["overhead_ms"] or nan)["p95"] for name in contenders]
        left.barh(ys, p50, height=width, color=COLORS[variant], label=f"p50, fake {variant}")
        left.scatter(
            p95, ys, marker="|", s=200, color="black", zorder=3, label="p95" if offset == 0 else None
        )
        for y, value in zip(ys, p50, strict=True):
            label = "failed" if value != value else f"{value:.1f}"  # NaN != NaN
            left.text(max(value, 0) + 0.3 if value == value else 0.3, y, label, va="center", fontsize=8)
    left.set_yticks(range(len(contenders)), [plain(name) for name in contenders], fontsize=9)
    left.invert_yaxis()
    left.set_xlabel("overhead per call over the floor (ms), lower is better")
    left.set_title("Overhead per call")
    left.legend(fontsize=8, loc="lower right")
    left.grid(axis="x", alpha=0.3)

    for axis, variant in ((right, "instant"), (right2, "50ms")):
        rows = [row for row in summary[variant] if row["kind"] == "HTTP" and row["name"] != "fake"]
        levels = ("1", "16", "64")
        top = max([row["rps"][level] for row in rows for level in levels] + [1.0])
        axis.set_ylim(0, top * 1.3)  # room for the legend above the bars
        bar = 0.8 / len(rows)
        for index, row in enumerate(rows):
            xs = [level + (index - (len(rows) - 1) / 2) * bar for level in range(len(levels))]
            values = [row["rps"][level] for level in levels]
            axis.bar(xs, values, width=bar, label=plain(row["name"]))
            for x, value in zip(xs, values, strict=True):
                axis.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
        axis.set_xticks(range(len(levels)), [f"c={level}" for level in levels])
        axis.set_ylabel("requests/s, higher is better")
        axis.set_title(f"HTTP throughput, fake {variant}")
        axis.legend(fontsize=8, loc="upper left")
        axis.grid(axis="y", alpha=0.3)

    fig.suptitle(
        f"make bench, {machine['date']}: {machine['nproc']} CPUs ({machine['cpu']}), {machine['ram_gib']} GiB RAM",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "latest.png", dpi=110)
    emit({"png": str(RESULTS / "latest.png")})


if __name__ == "__main__":
    main()
