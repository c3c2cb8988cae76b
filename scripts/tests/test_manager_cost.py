"""scripts/manager_cost.py's pure parts: the summary (medians, ratios to uvcluster, failed rounds
left out) and its REPORT.md section (rewritten in place, never duplicated)."""
import manager_cost


def rec(manager, rnd, cpu, rss, rps=100.0):
    return {"manager": manager, "workers": 2, "round": rnd, "requests": 1000, "errors": 0, "rps": rps,
            "cpu_ms": cpu, "cpu_ms_per_1000_requests": cpu, "rss_kb": rss, "manager_processes": 1}


def test_summary_is_the_median_and_ratios_are_uvcluster_over_theirs():
    records = [rec("uvc-rr", 0, 10, 4000), rec("uvc-rr", 1, 30, 6000), rec("uvc-rr", 2, 20, 5000),
               rec("pm2", 0, 80, 60000), rec("pm2", 1, 40, 40000),
               {"manager": "node-cluster", "workers": 2, "round": 0, "error": "did not start"}]
    s = manager_cost.summarize(records)
    assert s["uvc-rr"]["cpu_ms_per_1000_requests"] == 20 and s["uvc-rr"]["rss_kb"] == 5000
    assert s["pm2"]["rounds"] == 2 and s["pm2"]["cpu_ms_per_1000_requests"] == 60
    assert s["pm2"]["uvc_cpu_ratio"] == 20 / 60 and s["pm2"]["uvc_rss_ratio"] == 5000 / 50000
    assert "node-cluster" not in s


def test_report_section_is_replaced_not_appended_twice(tmp_path):
    report = tmp_path / "REPORT.md"
    report.write_text("# Lab\n\nbody\n")
    doc = {"env": {"workers": 2, "connections": 16, "seconds": 4, "rounds": 3, "loadavg_1m": 1.0, "git": "x"},
           "summary": manager_cost.summarize([rec("uvc-rr", 0, 10, 4096)]), "unavailable": {"pm2": "missing"}}
    assert manager_cost.link_in(str(report), doc)
    assert manager_cost.link_in(str(report), doc)
    text = report.read_text()
    assert text.startswith("# Lab\n\nbody\n")
    assert text.count(manager_cost.SECTION_BEGIN) == 1 and text.count(manager_cost.SECTION_END) == 1
    assert "| uvc-rr | 1 | 10.0 | 4.0 |" in text and "| pm2 | 0 | unavailable: missing |" in text
    assert not manager_cost.link_in(str(tmp_path / "absent.md"), doc)
