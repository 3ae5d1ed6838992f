"""The shared U-Net throughput harness, on fake runs with set timings (no models, no timing noise)."""
import pytest

from multidiff.benchmarks import throughput_harness as harness
from multidiff.benchmarks.unet2d_throughput import TABLE as TABLE_2D
from multidiff.benchmarks.unet3d_throughput import TABLE as TABLE_3D


class FakeRun(harness.Run):
    def __init__(self, key, mode, seconds, batch=4, gflops=2.0):
        self.key, self.mode, self.label, self.gflops, self.params = key, mode, f"{key} net", gflops, 6_900_000
        self.batches = {"train": batch, "sample": batch}
        self.times = {"train": [seconds], "sample": [seconds / 2]}
        self.calls = 0

    def train(self):
        self.calls += 1

    def sample(self):
        pass


def test_time_rounds_without_budget_runs_every_round_after_one_warm_up():
    runs = [FakeRun("ours", "fp32", 1.0), FakeRun("peer", "fp32", 1.0)]
    assert harness.time_rounds(runs, 3) == 3
    assert [r.calls for r in runs] == [4, 4]
    assert [len(r.times["train"]) for r in runs] == [4, 4]  # 1 set by FakeRun + 3 timed


def test_time_rounds_with_a_spent_budget_stops_after_min_rounds():
    assert harness.time_rounds([FakeRun("ours", "fp32", 1.0)], 7, min_rounds=2, budget=0.0) == 2
    assert harness.time_rounds([FakeRun("ours", "fp32", 1.0)], 7, min_rounds=2, budget=1e9) == 7


@pytest.mark.parametrize("fmt, head", [
    (TABLE_2D, "| model | mode | GFLOP/img (fwd) | params | train img/s | train TFLOP/s | % peak | vs best peer "
               "| sample img/s | sample TFLOP/s | % peak | vs best peer |"),
    (TABLE_3D, "| model | mode | GFLOP/clip (fwd) | params | train clips/s | train TFLOP/s | % peak | vs fastest peer "
               "| sample clips/s | sample TFLOP/s | % peak | vs fastest peer |"),
])
def test_markdown_table_keeps_each_benchmarks_columns(fmt, head):
    runs = [FakeRun("ours", "bf16", 0.5), FakeRun("peer", "bf16", 1.0)]
    lines = harness.markdown_table(runs, 0.1, ("peer",), fmt).splitlines()
    assert lines[0] == head and lines[1] == "|---" * 12 + "|"
    ours = lines[2].split(" | ")
    assert ours[7] == "2.00x" and ours[11] == "2.00x |"  # 8 img/s vs 4, 16 vs 8
    assert lines[3].split(" | ")[7] == "1.00x"


def test_markdown_table_without_peers_has_no_ratios():
    row = harness.markdown_table([FakeRun("ours", "bf16", 0.5)], 0.1, ("peer",), TABLE_2D).splitlines()[2]
    assert row.endswith("| - |") and row.count(" - ") == 2


def test_summary_line_of_each_benchmark(capsys):
    runs = [FakeRun("ours", "bf16", 0.5, gflops=10.0), FakeRun("peer", "bf16", 1.0), FakeRun("peer", "fp32", 2.0)]
    harness.print_vs_fastest_peer(runs, ("peer",), "bf16", 0.5, "bf16 peak", peak_target=0.4)
    harness.print_vs_fastest_peer(runs, ("peer",), "bf16", 0.5, "bf16 conv peak", name_sample_peer=True)
    # ours trains 8 img/s at 10 GFLOP x3 = 0.24 TFLOP/s: 48% of 0.5
    assert capsys.readouterr().out == (
        "\nours net, bf16: training 2.00x the fastest peer configuration (peer net, bf16; target >= 5x: NOT met), "
        "48% of the measured bf16 peak (target >= 40%: met); sampling 2.00x the fastest peer configuration\n"
        "\nours net, bf16: training 2.00x the fastest peer configuration (peer net, bf16; target >= 5x: NOT met), "
        "48% of the measured bf16 conv peak; sampling 2.00x the fastest peer configuration (peer net, bf16)\n")
