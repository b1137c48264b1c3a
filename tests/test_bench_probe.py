"""bench/probe_cross_core.py: the cross-core write probe runs through the NumPy backend's lanes,
prints one line per probe, and says so where there is only one lane."""

import probe_cross_core  # bench/ is on the test path (pyproject)


def test_probe_times_a_store_after_the_other_lane_read_and_one_without(monkeypatch):
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
    read = []
    original = probe_cross_core._write_us

    def counted(buffer, source, reader):
        read.append(reader is not None)
        return original(buffer, source, reader)

    monkeypatch.setattr(probe_cross_core, "_write_us", counted)
    remote, local = probe_cross_core.probe()
    assert read == [True, False]
    assert remote > 0 and local > 0


def test_main_prints_one_line_per_probe(monkeypatch, capsys):
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "2")
    assert probe_cross_core.main(["0"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "after the other lane read it" in lines[0] and "remote / local" in lines[0]


def test_main_refuses_one_lane(monkeypatch, capsys):
    monkeypatch.setenv("JUICEPY_NUM_THREADS", "1")
    assert probe_cross_core.main([]) == 1
    assert "one lane here" in capsys.readouterr().out
