"""Scale-out through a real nginx (the configuration of docs/operations.md): two `jr2net serve`
replicas on 127.0.0.1, streams spread over both, one replica stopped mid-run. nginx is installed
by `make nginx` (the `pytest` target depends on it); without it this test fails, it never skips."""

from __future__ import annotations

from benchmarks.scaleout import nginx_binary, nginx_config, run_scaleout


def test_nginx_is_installed_and_the_docs_config_is_the_one_run():
    assert nginx_binary()  # FileNotFoundError naming `make nginx` otherwise
    text = nginx_config([41001, 41002], 41003)
    assert "127.0.0.1:41001" in text and "127.0.0.1:41002" in text and "127.0.0.1:41003" in text
    assert "grpc_pass" in text


def test_a_stopped_replica_ends_its_streams_unavailable_and_new_streams_use_the_survivor():
    r = run_scaleout("term", streams=4, frames=60, fps=10, after=4)
    spread = r["sessions_per_replica_before"]
    assert sum(spread) == 4 and min(spread) >= 1, r  # least_conn spread the streams
    assert r["victim_streams_status"] == ["UNAVAILABLE"] * spread[r["victim"]], r["first_streams"]
    assert r["survivor_streams_ok"] == spread[1 - r["victim"]], r["first_streams"]
    assert r["new_streams_ok"] == 4, r["new_streams_detail"]
    assert r["nginx_took_it_out"], "nginx never marked the stopped replica down"
    assert r["victim_exit_code"] == 0  # drained, then exited cleanly


def test_a_killed_replica_ends_its_streams_unavailable_through_the_client_library():
    r = run_scaleout("kill", streams=4, frames=60, fps=10, after=4)
    spread = r["sessions_per_replica_before"]
    lost = [s for s in r["first_streams"] if s["status"] != "OK"]
    assert r["victim_exit_code"] == -9
    assert [s["status"] for s in lost] == ["UNAVAILABLE"] * spread[r["victim"]], r["first_streams"]
    assert all("replica lost mid-stream" in s["details"] for s in lost), lost  # nginx's RST_STREAM
    assert r["survivor_streams_ok"] == spread[1 - r["victim"]], r["first_streams"]
    assert r["new_streams_ok"] == 4, r["new_streams_detail"]
