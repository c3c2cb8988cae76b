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
