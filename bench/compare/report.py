"""Turning the raw measurements into the summary rows, the Markdown table and latest.json (stdlib only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "results"
QS = ("p50", "p95", "p99")

LABELS = {
    "floor_project": "openai SDK, direct (floor)",
    "ours": "**ours** `execute_agent`",
    "floor_bench": "openai SDK, direct (floor, bench venv)",
    "litellm": "LiteLLM `acompletion`",
    "pydantic_ai": "pydantic-ai `Agent.run`",
    "fake": "fake server, direct (floor)",
    "ours_http": "**ours** `POST /api/v1/agents/{id}/execute/`",
    "litellm_proxy": "LiteLLM proxy `/v1/chat/completions`",
}
RECORDS = {
    "ours": "execution row (INSERT running + 1 UPDATE), attempts, tokens, Decimal cost",
    "ours_http": "same + token auth, agent lookup, rate limits (Redis), idempotency check",
    "litellm": "nothing",
    "pydantic_ai": "nothing",
    "litellm_proxy": "nothing (no DB); master-key auth",
}


def proxy_config(
    fake_url: str, variants: dict[str, str], models: dict[str, str], api_key: str, master: str
) -> str:
    """LiteLLM proxy config: one model name per fake variant, no retries, no telemetry, no database."""
    lines = ["model_list:"]
    for variant, path in variants.items():
        lines += [
            f"  - model_name: {models[variant]}",
            "    litellm_params:",
            "      model: openai/gpt-4o-mini",
            f'      api_base: "{fake_url}{path}"',
            f"      api_key: {api_key}",
        ]
    lines += [
        "litellm_settings:",
        "  telemetry: false",
        "  num_retries: 0",
        "general_settings:",
        f"  master_key: {master}",
    ]
    return "\n".join(lines) + "\n"


def _diff(contender: dict[str, Any] | None, floor: dict[str, Any] | None) -> dict[str, float] | None:
    if not contender or not floor:
        return None
    return {q: round(contender[q] - floor[q], 2) for q in QS}


def _load(result: dict[str, Any], concurrency: int) -> dict[str, Any]:
    return next(row for row in result["loads"] if row["concurrency"] == concurrency)


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Per fake variant: one row per contender, overheads against the floor measured in the same run."""
    out: dict[str, Any] = {}
    for variant, inproc in data["in_process"].items():
        rows = []
        for name in ("floor_project", "ours", "floor_bench", "litellm", "pydantic_ai"):
            raw = inproc[name]
            floor = inproc[
                "floor_bench" if name in ("litellm", "pydantic_ai", "floor_bench") else "floor_project"
            ]
            is_floor = name.startswith("floor")
            rows.append(
                {
                    "name": name,
                    "kind": "in-process",
                    "latency_ms": {q: raw["calls"][q] for q in QS},
                    "overhead_ms": None if is_floor else _diff(raw["calls"], floor["calls"]),
                    "ttft_ms": raw.get("ttft", {}).get("p50"),
                    "ttft_overhead_ms": None
                    if is_floor
                    else round(raw["ttft"]["p50"] - floor["ttft"]["p50"], 2)
                    if raw.get("ttft")
                    else None,
                    "rps": None,
                    "peak_rss_mb": raw["peak_rss_mb"],
                    "cpu_ms_per_call": raw["calls"]["cpu_ms_per_call"],
                    "db_cpu_ms_per_call": None,
                    "rows_written": raw.get("rows_written"),
                    "last_row": raw.get("last_row"),
                    "versions": raw.get("versions"),
                }
            )
        http = data["http"][variant]
        fake = http["fake"]
        for name in ("fake", "ours", "litellm_proxy"):
            raw = http[name]
            c1 = _load(raw, 1)
            c16 = _load(raw, 16)
            is_floor = name == "fake"
            rows.append(
                {
                    "name": "ours_http" if name == "ours" else name,
                    "kind": "HTTP",
                    "latency_ms": {q: c1["latency_ms"][q] for q in QS} if c1["latency_ms"] else None,
                    "overhead_ms": None
                    if is_floor
                    else _diff(c1["latency_ms"], _load(fake, 1)["latency_ms"]),
                    "ttft_ms": raw["ttft"]["p50"],
                    "ttft_overhead_ms": None
                    if is_floor
                    else round(raw["ttft"]["p50"] - fake["ttft"]["p50"], 2),
                    "rps": {str(row["concurrency"]): row["rps"] for row in raw["loads"]},
                    "errors": sum(row["errors"] for row in raw["loads"]),
                    "first_error": next(
                        (row["first_error"] for row in raw["loads"] if row["first_error"]), ""
                    ),
                    "peak_rss_mb": raw.get("peak_rss_mb"),
                    "cpu_ms_per_call": c16.get("server_cpu_ms_per_request"),
                    "db_cpu_ms_per_call": c16.get("db_cpu_ms_per_request"),
                    "generator_cpu_ms_per_call": c16.get("generator_cpu_ms_per_request"),
                    "fake_cpu_ms_per_call": c16.get("fake_cpu_ms_per_request"),
                    "machine_idle_share_by_turn_c16": c16.get("machine_idle_share_by_turn"),
                    "busiest_process_cpu_share_c16": c16.get("busiest_process_cpu_share"),
                    "rps_by_turn_c16": c16.get("rps_by_turn"),
                    "cpu_ms_per_call_by_turn_c16": c16.get("server_cpu_ms_per_request_by_turn"),
                }
            )
        out[variant] = rows
    out["ratios"] = ratios(out.get("instant", []))
    return out


def ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by = {row["name"]: row for row in rows}

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 2) if a is not None and b else None

    def p50(name: str) -> float | None:
        overhead = by.get(name, {}).get("overhead_ms")
        return overhead["p50"] if overhead else None

    def rps16(name: str) -> float | None:
        rps = by.get(name, {}).get("rps")
        return rps["16"] if rps else None

    # Turn by turn: the two servers' turns alternate (bench/run.py), so turn i of each ran under about the
    # same load from the rest of the machine; the spread says how far one run's ratio can be trusted.
    by_turn = [
        ratio(ours, proxy)
        for ours, proxy in zip(
            by.get("ours_http", {}).get("rps_by_turn_c16") or [],
            by.get("litellm_proxy", {}).get("rps_by_turn_c16") or [],
            strict=False,
        )
    ]
    # The turns in which both servers spread the load over their processes (busiest share at most BALANCED):
    # a turn where one process of a server took every connection compares one core with two.
    ours, proxy = by.get("ours_http", {}), by.get("litellm_proxy", {})
    balanced = [
        index
        for index, (a, b) in enumerate(
            zip(
                ours.get("busiest_process_cpu_share_c16") or [],
                proxy.get("busiest_process_cpu_share_c16") or [],
                strict=False,
            )
        )
        if a <= BALANCED and b <= BALANCED
    ]
    ours_cpu = ours.get("cpu_ms_per_call_by_turn_c16") or []
    proxy_cpu = proxy.get("cpu_ms_per_call_by_turn_c16") or []
    return {
        "ours_vs_litellm_inprocess_overhead_p50": ratio(p50("ours"), p50("litellm")),
        "ours_vs_pydantic_ai_inprocess_overhead_p50": ratio(p50("ours"), p50("pydantic_ai")),
        "ours_vs_litellm_proxy_rps_c16": ratio(rps16("ours_http"), rps16("litellm_proxy")),
        "ours_vs_litellm_proxy_rps_c16_by_turn": [value for value in by_turn if value is not None],
        "balanced_turns_c16": balanced,
        "ours_vs_litellm_proxy_rps_c16_balanced": [by_turn[i] for i in balanced if i < len(by_turn)],
        # Server CPU per request (ours with PostgreSQL's) in the balanced turns: the proxy's over ours. Unlike
        # requests/s, it does not depend on what the load generator and the fake take of the shared cores.
        "litellm_proxy_vs_ours_cpu_per_request_c16_balanced": [
            ratio(proxy_cpu[i], ours_cpu[i] + (ours.get("db_cpu_ms_per_call") or 0.0))
            for i in balanced
            if i < min(len(proxy_cpu), len(ours_cpu))  # results written before the per-turn CPU have none
        ],
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _row(row: dict[str, Any]) -> str:
    overhead = row["overhead_ms"]
    if overhead is None:
        latency = row["latency_ms"]
        over = "floor: " + " / ".join(_fmt(latency[q], 2) for q in QS) if latency else "—"
    else:
        over = " / ".join(_fmt(overhead[q], 2) for q in QS)
    ttft = (
        _fmt(row["ttft_overhead_ms"], 2)
        if row["ttft_overhead_ms"] is not None
        else (f"floor: {_fmt(row['ttft_ms'], 2)}" if row["ttft_ms"] is not None else "—")
    )
    rps = " / ".join(_fmt(row["rps"][c], 0) for c in ("1", "16", "64")) if row["rps"] else "—"
    if row.get("errors"):
        rps += f" ({row['errors']} errors)"
    cpu = _fmt(row["cpu_ms_per_call"], 2)
    if row["name"] == "ours_http" and row.get("db_cpu_ms_per_call") is not None:
        cpu += f" + {_fmt(row['db_cpu_ms_per_call'], 2)} DB"
    records = RECORDS.get(row["name"], "—")
    return (
        f"| {LABELS[row['name']]} | {row['kind']} | {over} | {ttft} | {rps} | {_fmt(row['peak_rss_mb'])} | {cpu} "
        f"| {records} |"
    )


#: The HTTP servers of the summary rows whose processes' CPU split is recorded, as the text names them.
HTTP_SERVERS = {"ours_http": "ours", "litellm_proxy": "LiteLLM proxy"}
#: A turn counts as balanced when the busiest of the two server processes did at most this share of the work.
BALANCED = 0.6


def _process_shares(rows: list[dict[str, Any]], workers: int | None) -> str:
    """How evenly each HTTP server's processes shared the c=16 load (uvicorn's shared socket can give one
    worker every connection: config/serve.py)."""
    shares = [
        f"{HTTP_SERVERS[row['name']]} {', '.join(f'{share:.0%}' for share in row['busiest_process_cpu_share_c16'])}"
        for row in rows
        if row["name"] in HTTP_SERVERS and row.get("busiest_process_cpu_share_c16")
    ]
    return (
        f"- Server processes: {workers or 'WEB_CONCURRENCY'} each (ours: `python -m config.serve`, a socket per "
        "worker; the proxy: `litellm --num_workers`, one socket shared by its uvicorn workers). The busiest "
        "process's share of the server's CPU at c=16, by turn (50% is an even split over two): "
        + ("; ".join(shares) or "not measured")
        + "."
    )


def _turn_range(r: dict[str, Any]) -> str:
    turns = r.get("ours_vs_litellm_proxy_rps_c16_by_turn") or []
    if len(turns) < 2:
        return ""
    return f" ({_fmt(min(turns), 2)}-{_fmt(max(turns), 2)}x turn by turn, {len(turns)} turns)"


def _balanced(r: dict[str, Any]) -> str:
    rps = r.get("ours_vs_litellm_proxy_rps_c16_balanced") or []
    cpu = r.get("litellm_proxy_vs_ours_cpu_per_request_c16_balanced") or []
    if not rps:
        return " No turn had both servers' load split evenly."
    return (
        f" In the {len(rps)} turn(s) where both servers split the load evenly (busiest process at most "
        f"{BALANCED:.0%}): {', '.join(f'{value:.2f}x' for value in rps)} the proxy's requests/s; the proxy used "
        f"{', '.join(f'{value:.2f}x' for value in cpu if value is not None)} our server CPU per request (ours "
        "with PostgreSQL's)."
    )


def _skew_warning(rows: list[dict[str, Any]]) -> str:
    """A caveat on the HTTP ratio when one process of a server did most of its work at c=16 (the ratio then
    compares a server on one core with one on two)."""
    skewed = [
        f"{HTTP_SERVERS[row['name']]}: its busiest process did {max(row['busiest_process_cpu_share_c16']):.0%} of "
        "its work"
        for row in rows
        if row["name"] in HTTP_SERVERS and max(row.get("busiest_process_cpu_share_c16") or [0.0]) > 0.75
    ]
    return f" (**skewed**: {'; '.join(skewed)}; see Server processes below)" if skewed else ""


def markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    summary = data["summary"]
    r = summary["ratios"]
    versions = {}
    for name in ("ours", "litellm", "pydantic_ai"):
        versions.update(data["in_process"]["instant"][name].get("versions", {}))
    lines = [
        "# Agent engine vs direct SDK, LiteLLM, pydantic-ai",
        "",
        f"Measured {m['date']} on {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, PostgreSQL {m['postgresql']}; load average {m['loadavg_1m_at_start']} at the "
        f"start, {m['loadavg_1m']} at the end. `make bench` took {data['total_s']:.0f} s"
        + (
            f" (of which {data['bench_venv_install_s']:.0f} s installing the bench venv)."
            if data["bench_venv_install_s"]
            else " (bench venv already installed)."
        )
        + (" **BENCH_QUICK run: too few samples to compare.**" if data.get("quick") else ""),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".",
        "",
        f"**Ratios (instant fake):** our in-process overhead p50 is {_fmt(r['ours_vs_litellm_inprocess_overhead_p50'], 2)}x "
        f"LiteLLM's and {_fmt(r['ours_vs_pydantic_ai_inprocess_overhead_p50'], 2)}x pydantic-ai's; "
        f"our HTTP endpoint serves {_fmt(r['ours_vs_litellm_proxy_rps_c16'], 2)}x the LiteLLM proxy's requests/s at "
        "concurrency 16" + _turn_range(r) + _skew_warning(summary.get("instant", [])) + "." + _balanced(r),
        "",
    ]
    header = (
        "| Contender | How | Overhead p50 / p95 / p99 (ms) | First token overhead p50 (ms) | req/s c=1 / 16 / 64 "
        "| Peak RSS (MiB) | CPU ms per call | Records per run |\n|---|---|---|---|---|---|---|---|"
    )
    titles = {"instant": "Fake answering at once", "50ms": "Fake answering after 50 ms"}
    for variant in ("instant", "50ms"):
        lines += [f"## {titles[variant]}", "", header, *(_row(row) for row in summary[variant]), ""]
    lines += [
        "How to read it:",
        "- Overhead = the contender's latency percentile minus the floor's, same fake, same run. In-process: the "
        "floor is the raw `openai` SDK (same version) in its own process of the same venv; every contender "
        "runs alone in its own process, sequential calls. HTTP: the floor is the fake server called directly "
        "by the same load generator; latency from the concurrency-1 run.",
        "- **Our rows do work the others skip**: each call inserts its execution row (status running), runs "
        "the agent (retry/fallback machinery, cost in Decimal from genai-prices) and writes the final "
        "UPDATE with attempts, tokens and cost. Over HTTP add token authentication and the agent lookup "
        "(cached in Redis, which the server processes share, as they must to be correct across processes), "
        "the per-user and per-run rate limits (counted in Redis) and the idempotency check. LiteLLM and "
        "pydantic-ai record nothing; the proxy runs without a database or Redis.",
        "- CPU ms per call: in-process, the whole process's CPU (all threads) over the timed calls / calls. "
        "HTTP: the server process's CPU per request at concurrency 16; `+ N DB` is PostgreSQL's CPU "
        "per request on top (ours only; the others use no database).",
        "- Peak RSS: of the process that made the calls (in-process) or of the server process (HTTP).",
        "- req/s: one keep-alive connection per concurrent client, posting back to back for "
        f"{data['settings']['load_seconds']} s (at most {data['settings']['load_max_requests']} requests); "
        "the fake's own row is the load generator's ceiling on this machine (it shares the 2 cores). "
        + _harness_cpu(summary.get("instant", [])),
        _process_shares(summary.get("instant", []), data["machine"].get("web_workers")),
        "- First token: streamed request (SSE) until the first text delta arrives.",
        "",
        "Raw numbers: `bench/results/latest.json`; chart: `bench/results/latest.png`.",
    ]
    return "\n".join(lines) + "\n"


def _harness_cpu(rows: list[dict[str, Any]]) -> str:
    """What the load generator (bench/compare/load.py) and the fake took of the shared cores per request, and
    how much of the machine stayed idle while each server was loaded."""
    http = [row for row in rows if row["kind"] == "HTTP" and row["name"] != "fake"]
    parts = [
        f"{row['name']} {row['generator_cpu_ms_per_call']} + {row['fake_cpu_ms_per_call']}"
        for row in http
        if row.get("generator_cpu_ms_per_call") is not None
    ]
    idle = [
        f"{row['name']} {min(shares) * 100:.0f}-{max(shares) * 100:.0f} %"
        for row in http
        if (shares := row.get("machine_idle_share_by_turn_c16"))
    ]
    text = ""
    if parts:
        text += "CPU ms per request at c=16 of the load generator + the fake: " + ", ".join(parts) + ". "
    if idle:
        text += "The machine's idle share at c=16, by turn: " + ", ".join(idle) + "."
    return text.strip()


def write(data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(data))
