"""bench/rr_instructions.py's pure part: the instruction total read from callgrind_annotate."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))
import rr_instructions  # noqa: E402


def test_the_program_total_is_read_with_its_thousands_separators():
    out = ("Events recorded:  Ir\n"
           "--------------------------------------------------------------------------------\n"
           "154,715,641 (100.0%)  PROGRAM TOTALS\n\n"
           "--------------------------------------------------------------------------------\n"
           "Ir                    file:function\n"
           "154,715,646 (100.0%)  cmd_run.cpp:uvcluster::cli::run_run(int, char**) [uvcluster]\n")
    assert rr_instructions.program_total(out) == 154715641


def test_no_total_is_none_not_a_guess():
    assert rr_instructions.program_total("valgrind: something went wrong\n") is None


def test_the_hand_off_in_the_workers_is_counted_against_the_same_workers_without_one():
    results = {"raw-k1-workers": {"workers_instructions_per_conn": 459},
               "raw-reuseport-workers": {"workers_instructions_per_conn": 133},
               "rr-workers": {"workers_instructions_per_conn": 8054},
               "rr-w16-workers": {"workers_instructions_per_conn": None}}
    rr_instructions.add_handoff_overheads(results)
    assert results["raw-k1-workers"]["workers_handoff_instructions_per_conn"] == 326
    assert "workers_handoff_instructions_per_conn" not in results["rr-workers"]  # reuseport did not run
    assert "workers_handoff_instructions_per_conn" not in results["rr-w16-workers"]
