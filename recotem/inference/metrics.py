"""Prometheus text metrics kept in plain dicts: one process, one event loop, no locks needed."""

from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency_counts: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.model_loads: dict[str, int] = defaultdict(int)
        self.swaps = 0
        self.gauges: dict[str, float] = {}

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests[(endpoint, status)] += 1
        counts = self.latency_counts.get(endpoint)
        if counts is None:
            counts = self.latency_counts[endpoint] = [0] * (len(BUCKETS) + 1)
        counts[bisect_left(BUCKETS, seconds)] += 1
        self.latency_sum[endpoint] += seconds

    def render(self) -> bytes:
        out = [
            "# HELP recotem_inference_requests_total Inference requests by endpoint and status.",
            "# TYPE recotem_inference_requests_total counter",
        ]
        for (endpoint, status), n in sorted(self.requests.items()):
            out.append(
                f'recotem_inference_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}'
            )
        out += [
            "# HELP recotem_inference_request_duration_seconds Time from request to response.",
            "# TYPE recotem_inference_request_duration_seconds histogram",
        ]
        for endpoint, counts in sorted(self.latency_counts.items()):
            cumulative = 0
            for bound, n in zip((*BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(
                    f'recotem_inference_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{le}"}} {cumulative}'
                )
            out.append(
                f'recotem_inference_request_duration_seconds_sum{{endpoint="{endpoint}"}} {self.latency_sum[endpoint]:.6f}'
            )
            out.append(
                f'recotem_inference_request_duration_seconds_count{{endpoint="{endpoint}"}} {cumulative}'
            )
        out += [
            "# HELP recotem_inference_model_loads_total Model artifact loads by result.",
            "# TYPE recotem_inference_model_loads_total counter",
        ]
        for result in ("ok", "error"):
            out.append(
                f'recotem_inference_model_loads_total{{result="{result}"}} {self.model_loads[result]}'
            )
        out += [
            "# HELP recotem_inference_model_swaps_total Slots switched to a newly loaded model.",
            "# TYPE recotem_inference_model_swaps_total counter",
            f"recotem_inference_model_swaps_total {self.swaps}",
        ]
        for name, value in sorted(self.gauges.items()):
            out += [f"# TYPE recotem_inference_{name} gauge", f"recotem_inference_{name} {value:g}"]
        return ("\n".join(out) + "\n").encode()
