"""`make bench`'s HTTP ratio: only turns in which both servers split their load evenly count as balanced."""

from bench.compare import report


def _rows(*, ours_shares, proxy_shares, ours_cpu, proxy_cpu, ours_rps, proxy_rps):
    return [
        {
            "name": "ours_http",
            "overhead_ms": None,
            "rps": {"16": sum(ours_rps) / len(ours_rps)},
            "busiest_process_cpu_share_c16": ours_shares,
            "cpu_ms_per_call_by_turn_c16": ours_cpu,
            "db_cpu_ms_per_call": 1.0,
            "rps_by_turn_c16": ours_rps,
        },
        {
            "name": "litellm_proxy",
            "overhead_ms": None,
            "rps": {"16": sum(proxy_rps) / len(proxy_rps)},
            "busiest_process_cpu_share_c16": proxy_shares,
            "cpu_ms_per_call_by_turn_c16": proxy_cpu,
            "rps_by_turn_c16": proxy_rps,
        },
    ]


def test_a_turn_counts_as_balanced_only_when_both_servers_split_their_load():
    ratios = report.ratios(
        _rows(
            ours_shares=[0.5, 0.52, 0.9, 0.51],
            proxy_shares=[1.0, 0.55, 0.5, 0.53],
            ours_cpu=[7.0, 7.0, 7.0, 6.0],
            proxy_cpu=[12.0, 10.0, 10.0, 14.0],
            ours_rps=[200.0, 180.0, 100.0, 210.0],
            proxy_rps=[80.0, 150.0, 160.0, 140.0],
        )
    )

    assert ratios["balanced_turns_c16"] == [1, 3]
    assert ratios["ours_vs_litellm_proxy_rps_c16_balanced"] == [1.2, 1.5]
    # The proxy's CPU per request over ours with PostgreSQL's (1 ms): 10 / 8 and 14 / 7.
    assert ratios["litellm_proxy_vs_ours_cpu_per_request_c16_balanced"] == [1.25, 2.0]
    assert "In the 2 turn(s) where both servers split the load evenly" in report._balanced(ratios)


def test_no_balanced_turn_is_said_so():
    ratios = report.ratios(
        _rows(
            ours_shares=[0.5, 0.5],
            proxy_shares=[1.0, 0.99],
            ours_cpu=[7.0, 7.0],
            proxy_cpu=[12.0, 12.0],
            ours_rps=[200.0, 200.0],
            proxy_rps=[80.0, 80.0],
        )
    )

    assert ratios["balanced_turns_c16"] == []
    assert report._balanced(ratios) == " No turn had both servers' load split evenly."
