"""Motion-capture frames over gRPC: MocapFrame codec and checks, a real grpc.aio server on loopback
answering every mocap frame (bad ones with a FrameError, the stream going on), the learned path
taking mocap rows, and a 10-second Live Link Face take reenacted end to end by
``jr2net reenact --driving-csv`` with one output frame per row (counted with PyAV)."""

from __future__ import annotations

import asyncio

import av
import numpy as np
import pytest

from jr2net.clients.client import AsyncReenactClient, ReenactClient, session_config
from jr2net.face.importers import ICT_EXPRESSIONS
from jr2net.io.arkit_csv import sample_take, write_live_link_csv
from jr2net.protocol import MocapRow, mocap_message, mocap_problem, mocap_row, pb2, row_problem
from jr2net.server.app import local_server

NAMES = list(ICT_EXPRESSIONS)  # the 53 ICT names
E = len(NAMES)
OUT = (128, 128)  # d19.jpg is square


@pytest.fixture(scope="module")
def source_bytes(images_dir) -> bytes:
    return (images_dir / "d19.jpg").read_bytes()


@pytest.fixture(scope="module")
def address(ict_model_path):
    with local_server(face_model=str(ict_model_path), max_sessions=2, max_in_flight=4,
                      preload=False) as addr:
        yield addr


@pytest.fixture(scope="module")
def take_rows() -> list[MocapRow]:
    beta, head = sample_take(NAMES, seconds=1.0, fps=8, seed=3)
    return [MocapRow(beta[i], head[i], None, i * 125_000) for i in range(len(beta))]


def _config(source: bytes, **kw):
    return session_config(source, output_size=OUT, crop_size=64, output_format="PNG", **kw)


# ---- codec and checks (no server) ----------------------------------------------------------------


def test_mocap_message_round_trips_expression_head_and_translation():
    beta = np.linspace(0, 1, E, dtype=np.float32)
    row = MocapRow(beta, np.array([0.1, -0.2, 0.05]), np.array([1.0, 2.0, -3.0]), 42)
    back = mocap_row(mocap_message(7, row))
    assert back.capture_ts_us == 42
    np.testing.assert_allclose(back.expression, beta)
    np.testing.assert_allclose(back.head, [0.1, -0.2, 0.05], rtol=1e-6)
    np.testing.assert_allclose(back.translation, [1.0, 2.0, -3.0])
    # A zero head pose is still a head pose; no head at all stays None.
    assert mocap_row(mocap_message(0, MocapRow(beta, np.zeros(3)))).head is not None
    assert mocap_row(mocap_message(0, MocapRow(beta))).head is None


@pytest.mark.parametrize(("row", "needle"), [
    (MocapRow(np.zeros(E - 1)), f"expression has {E - 1} values, the face model has {E}"),
    (MocapRow(np.r_[np.zeros(E - 1), np.nan]), f"expression[{E - 1}] is nan, not finite"),
    (MocapRow(np.r_[1.5, np.zeros(E - 1)]), "expression[0] = 1.5 is outside [0, 1]"),
    (MocapRow(np.zeros(E), np.array([0.0, np.inf, 0.0])), "head.pitch is inf, not finite"),
    (MocapRow(np.zeros(E), np.array([4.0, 0.0, 0.0])), "head.yaw = 4 is outside"),
    (MocapRow(np.zeros(E), np.zeros(3), np.array([0, 0, 5000.0])), "translation.z = 5000 is outside"),
    (MocapRow(np.zeros(E), None, np.zeros(3)), "a translation needs a head pose"),
])  # fmt: skip
def test_row_problem_names_the_bad_value(row, needle):
    assert needle in row_problem(row, E)


def test_mocap_problem_checks_frame_id_and_sessions_without_mocap():
    good = mocap_message(0, MocapRow(np.zeros(E)))
    assert mocap_problem(good, E) == ""
    assert "frame_id must be >= 0" in mocap_problem(pb2.MocapFrame(frame_id=-1), E)
    assert "takes no MocapFrames" in mocap_problem(good, 0)


# ---- through a real server -----------------------------------------------------------------------


def test_mocap_stream_answers_every_frame_in_order_with_a_moving_face(address, source_bytes, take_rows):
    async def go():
        async with AsyncReenactClient(address) as client:
            session = await client.open_session(_config(source_bytes))
            results = [r async for r in session.run(take_rows)]
            info = await client.server_info()  # (preload=False: the model is built by now)
            return info, session.ready, results

    info, ready, results = asyncio.run(go())
    assert list(ready.expression_names) == NAMES and list(info.expression_names) == NAMES
    assert [r.frame_id for r in results] == list(range(len(take_rows)))
    assert [r.capture_ts_us for r in results] == [r.capture_ts_us for r in take_rows]
    assert all(r.ok and r.face_found and r.fallback == "" for r in results), results[0].error_message
    assert all(r.image.shape == (OUT[1], OUT[0], 3) for r in results)
    assert all(r.timings["track"] == 0.0 and r.timings["recombine"] > 0 for r in results)
    # The take opens the mouth and turns the head: frames differ from the first (neutral) one.
    first = results[0].image.astype(int)
    assert max(np.abs(r.image.astype(int) - first).mean() for r in results[1:]) > 1.0


def test_bad_mocap_frames_get_frame_errors_and_the_stream_continues(address, source_bytes, take_rows,
                                                                    images_dir):
    good = take_rows[4]
    nan = np.array(good.expression, copy=True)
    nan[3] = np.nan
    frames = [
        good,
        MocapRow(np.zeros(E - 2)),  # wrong length
        MocapRow(nan),  # NaN
        MocapRow(good.expression, np.array([0.0, 9.0, 0.0])),  # head pitch out of range
        pb2.MocapFrame(frame_id=-3, expression=[0.0] * E),  # negative id
        good,
        (images_dir / "d9.jpg").read_bytes(),  # an image frame in the same stream
        take_rows[5],
    ]
    with ReenactClient(address) as client:
        results = list(client.stream(source_bytes, frames, output_size=OUT, crop_size=64))
    assert len(results) == len(frames)
    codes = [r.error_code for r in results]
    assert codes == ["", "INVALID_ARGUMENT", "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                     "INVALID_ARGUMENT", "", "", ""]  # fmt: skip
    assert f"expression has {E - 2} values, the face model has {E}" in results[1].error_message
    assert "expression[3] is nan, not finite" in results[2].error_message
    assert "head.pitch = 9 is outside" in results[3].error_message
    assert "frame_id must be >= 0" in results[4].error_message
    assert results[4].frame_id == -3
    # Same row, same output: the bad frames in between changed nothing.
    assert results[0].data and results[0].data == results[5].data
    assert results[7].face_found and results[7].width == OUT[0]


def test_learned_sessions_take_mocap_rows(tmp_path, ict_model_path, images_dir, take_rows):
    from jr2net.face.model import load_face_model
    from jr2net.io.images import load_image
    from jr2net.pipeline.base import SessionOptions
    from jr2net.pipeline.learned import LearnedReenactor
    from jr2net.pipeline.mocap import expression_names, process_mocap
    from tests.test_learned_path import save_dcnet

    model = load_face_model(str(ict_model_path))
    reenactor = LearnedReenactor(model, dcnet=save_dcnet(tmp_path / "dcnet.pt", model))
    session = reenactor.start_session(load_image(images_dir / "d19.jpg"),
                                      SessionOptions(output_width=OUT[0], output_height=OUT[1]))
    assert expression_names(session) == NAMES
    out = [process_mocap(session, take_rows[i]) for i in (0, 4)]
    assert all(r.face_found and r.timings["dcnet"] > 0 for r in out)
    assert np.abs(out[0].image.astype(int) - out[1].image.astype(int)).mean() > 0.5
    with pytest.raises(ValueError, match="not finite"):
        process_mocap(session, MocapRow(np.full(E, np.nan)))


# ---- the CLI -------------------------------------------------------------------------------------


def test_reenact_driving_csv_streams_a_ten_second_take_one_frame_per_row(tmp_path, images_dir, capsys):
    from jr2net.cli import main

    beta, head = sample_take(NAMES, seconds=10.0, fps=30, seed=1)
    csv = write_live_link_csv(tmp_path / "take.csv", beta, NAMES, fps=30, head=head)
    out = tmp_path / "out.mp4"
    rc = main(["reenact", "--source", str(images_dir / "d19.jpg"), "--driving-csv", str(csv),
               "--csv-fps", "30", "--out", str(out), "--face-model", "ict", "--crop-size", "64",
               "--size", "96x96", "--no-progress"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert '"frames": 300' in capsys.readouterr().out
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == pytest.approx(30.0)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 300 == len(beta)
    assert frames[0].shape == (96, 96, 3)
    assert max(np.abs(f.astype(int) - frames[0].astype(int)).mean() for f in frames[::30]) > 1.0
