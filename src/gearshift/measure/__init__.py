"""Measurement: FLOPs, parameters, latency, memory; operating points, frontier, plots."""

from gearshift.measure.flops import (
    analytic_flops,
    attention_flops,
    count_flops,
    fixed_length_batch,
    flops_at_length,
    flops_per_example,
    model_inputs,
)
from gearshift.measure.latency import (
    LatencyComparison,
    LatencyStats,
    compare_latency,
    fixed_threads,
    forward_fn,
    make_batch,
    measure_latency,
)
from gearshift.measure.memory import MemoryStats, peak_memory
from gearshift.measure.params import count_parameters, parameter_breakdown, parameter_bytes
from gearshift.measure.profile import profile_markdown, profile_model
from gearshift.measure.report import (
    SEED_FREE,
    OperatingPoint,
    ResultsSink,
    machine_description,
    markdown_table,
    pareto_frontier,
    plot_points,
    plot_tradeoff,
    read_results,
    write_results,
)
from gearshift.measure.stats import PairedTest, decode_labels, encode_labels, mcnemar

__all__ = [
    "LatencyComparison",
    "LatencyStats",
    "MemoryStats",
    "OperatingPoint",
    "PairedTest",
    "analytic_flops",
    "attention_flops",
    "compare_latency",
    "count_flops",
    "count_parameters",
    "decode_labels",
    "encode_labels",
    "fixed_length_batch",
    "fixed_threads",
    "flops_at_length",
    "flops_per_example",
    "forward_fn",
    "machine_description",
    "make_batch",
    "markdown_table",
    "mcnemar",
    "measure_latency",
    "model_inputs",
    "parameter_breakdown",
    "parameter_bytes",
    "pareto_frontier",
    "peak_memory",
    "plot_points",
    "plot_tradeoff",
    "profile_markdown",
    "profile_model",
    "ResultsSink",
    "SEED_FREE",
    "read_results",
    "write_results",
]
