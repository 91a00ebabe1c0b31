"""Regression tests of the server's hardening: malformed messages, unusable options, stalled
readers, token files, reflection v1, oversize RAW outputs, aio clients during a drain, the CLI's
documented examples, and the clients' independence from the server package. Real grpc.aio
servers on 127.0.0.1 with the real geometric reenactor."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2

from jr2net.cli import build_parser
from jr2net.cli import main as cli_main
from jr2net.clients.client import AsyncReenactClient, make_frame, session_config
from jr2net.io.video import VideoReader
from jr2net.paths import PROJECT_ROOT
from jr2net.protocol import SERVICE_NAME, pb2
from jr2net.server.app import REFLECTION_V1_SERVICE, ServerThread
from jr2net.server.auth import read_token_file
from jr2net.server.config import ReenactorFactory, ServerConfig, load_config
from jr2net.server.options import check_options

OUT = (128, 128)
TOKEN = "hardening-token"
GARBAGE = b"\xff\xff\xff\xff\x0f"  # a varint that never ends: not a protobuf message


@pytest.fixture(scope="module")
def reenactor(ict_model_path):
    return ReenactorFactory(ServerConfig(face_model=str(ict_model_path))).get("geometric")


def server_thread(reenactor, **settings) -> ServerThread:
    cfg = ServerConfig(**{"host": "127.0.0.1", "port": 0, "metrics_port": -1, "preload": False,
                          **settings})
    return ServerThread(cfg, {"geometric": reenactor}).start()


@pytest.fixture(scope="module")
def server(reenactor):
    st = server_thread(reenactor, max_sessions=2, write_timeout=1.5, max_message_bytes=1 << 20)
    yield st
    st.stop()


@pytest.fixture(scope="module")
def source(images_dir) -> bytes:
    return (images_dir / "obama.jpg").read_bytes()


@pytest.fixture(scope="module")
def frames(videos_dir) -> list[np.ndarray]:
    return VideoReader(videos_dir / "d0.mp4").read_all(max_frames=6)


def rejected(st: ServerThread, reason: str) -> float:
    return st.server.metrics.rejected.labels(reason=reason)._value.get()


def raw_stream(channel: grpc.aio.Channel):
    """The Stream method taking request bytes as they are, so a test can send garbage."""
    return channel.stream_stream(f"/{SERVICE_NAME}/Stream", request_serializer=None,
                                 response_deserializer=pb2.StreamResponse.FromString)


async def final_status(call) -> tuple[list, grpc.StatusCode, str]:
    replies = []
    try:
        while (r := await call.read()) is not grpc.aio.EOF:
            replies.append(r)
        return replies, await call.code(), await call.details()
    except grpc.aio.AioRpcError as exc:
        return replies, exc.code(), exc.details()


# ---- 1. malformed protobuf -----------------------------------------------------------------------


def test_garbage_first_message_is_invalid_argument_counted_and_not_logged_as_error(server, caplog):
    before = rejected(server, "malformed")

    async def go():
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = raw_stream(channel)()
            await call.write(GARBAGE)
            return await final_status(call)

    with caplog.at_level(logging.INFO):
        replies, code, details = asyncio.run(go())
    assert replies == []
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a jr2net.v1.StreamRequest" in details and "SessionConfig" in details
    assert rejected(server, "malformed") == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_garbage_after_the_config_gets_a_frame_error_and_the_stream_goes_on(server, source, frames):
    before = rejected(server, "malformed")
    good = make_frame(0, frames[0])

    async def go():
        async with grpc.aio.insecure_channel(server.address) as channel:
            call = raw_stream(channel)()
            config = session_config(source, output_size=OUT)
            await call.write(pb2.StreamRequest(config=config).SerializeToString())
            assert (await call.read()).WhichOneof("kind") == "ready"
            replies = []
            for request in (GARBAGE, pb2.StreamRequest(frame=good).SerializeToString()):
                await call.write(request)
                replies.append(await call.read())
            await call.done_writing()
            rest, code, _ = await final_status(call)
            return replies + rest, code

    replies, code = asyncio.run(go())
    assert code == grpc.StatusCode.OK
    assert [r.WhichOneof("kind") for r in replies] == ["error", "output"]
    assert replies[0].error.code == "INVALID_ARGUMENT" and replies[0].error.frame_id == -1
    assert "malformed StreamRequest" in replies[0].error.message
    assert replies[1].output.frame_id == 0
    assert rejected(server, "malformed") == before + 1


# ---- 2. options validated at open ----------------------------------------------------------------


@pytest.mark.parametrize("options, needle", [
    ({"feather": "99999999999999999999999"}, "feather"),
    ({"feather": "-1"}, "feather"),
    ({"feather": "129"}, "0..128"),
    ({"feather": "2.5"}, "integer"),
    ({"light": "driving"}, "light"),
    ({"expression": "sideways"}, "expression"),
    ({"background_warp": "maybe"}, "background_warp"),
    ({"colour": "red"}, "unknown option 'colour'"),
])
def test_unusable_option_is_refused_when_the_session_opens(server, source, options, needle):
    async def go():
        async with AsyncReenactClient(server.address) as client:
            await client.open_session(session_config(source, output_size=OUT, options=options))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(go())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()


def test_options_at_the_ends_of_their_ranges_are_served(server, source, frames):
    options = {"feather": "128", "light": "none", "expression": "relative", "background_warp": "0"}

    async def go():
        async with AsyncReenactClient(server.address) as client:
            session = await client.open_session(session_config(source, output_size=OUT,
                                                               options=options))
            return [r async for r in session.run(frames[:2], decode=False)]

    results = asyncio.run(go())
    assert [r.ok for r in results] == [True, True], [r.error_message for r in results]
    check_options("geometric", {"feather": "0"}, 256)  # 0: no feathering


# ---- 3. write-stall timeout ----------------------------------------------------------------------


def test_a_client_that_stops_reading_is_ended_and_frees_its_slot(server, source, frames):
    """RAW replies of 196 kB overflow a 64 kB flow-control window (BDP probing off) at once."""
    before = rejected(server, "write_stall")

    async def go():
        options = [("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(server.address, options=options) as stalled_channel, \
                AsyncReenactClient(server.address) as client:
            call = raw_stream(stalled_channel)()
            config = session_config(source, output_size=(256, 256), output_format="RAW_RGB24")
            await call.write(pb2.StreamRequest(config=config).SerializeToString())
            assert (await call.read()).WhichOneof("kind") == "ready"
            for i in range(4):
                await call.write(pb2.StreamRequest(frame=make_frame(i, frames[i])).SerializeToString())
            second = await client.open_session(session_config(source, output_size=OUT))
            t0 = time.monotonic()
            while server.server.servicer.slots_used > 1 and time.monotonic() - t0 < 30:
                await asyncio.sleep(0.05)  # the stalled stream, no longer read, is ended
            freed_after = time.monotonic() - t0
            third = await client.open_session(session_config(source, output_size=OUT))
            second.call.cancel()
            third.call.cancel()
            _, code, details = await final_status(call)
            return freed_after, code, details

    freed_after, code, details = asyncio.run(go())
    assert freed_after < 15
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "write stalled" in details
    assert rejected(server, "write_stall") == before + 1


# ---- 4. token file -------------------------------------------------------------------------------


def test_token_file_uses_its_first_line_and_warns_when_others_can_read_it(tmp_path, caplog):
    path = tmp_path / "token"
    path.write_text("  s3cret  \nsecond line: a comment\n")
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="jr2net.server.auth"):
        assert read_token_file(path) == "s3cret"
        assert load_config({"token_file": str(path)}, env={}).resolved_token() == "s3cret"
    assert not caplog.records
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="jr2net.server.auth"):
        read_token_file(path)
    assert "readable by its group or by others" in caplog.text
    path.write_text("\nsecret-on-line-2\n")
    with pytest.raises(ValueError, match="first line is empty"):
        read_token_file(path)


# ---- 5. reflection v1 and v1alpha, behind the token ----------------------------------------------


def _list_services(address: str, service: str, token: str | None) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        method = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        requests = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        reply = next(method(requests, metadata=metadata, timeout=10))
        return [s.name for s in reply.list_services_response.service]


@pytest.mark.parametrize("service", [REFLECTION_V1_SERVICE, "grpc.reflection.v1alpha.ServerReflection"])
def test_reflection_v1_and_v1alpha_need_the_token_when_auth_is_on(reenactor, service):
    st = server_thread(reenactor, token=TOKEN)
    try:
        names = _list_services(st.address, service, TOKEN)
        assert SERVICE_NAME in names and REFLECTION_V1_SERVICE in names
        with pytest.raises(grpc.RpcError) as refused:
            _list_services(st.address, service, None)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        st.stop()


# ---- 7. RAW outputs over the message limit -------------------------------------------------------


def test_raw_output_larger_than_the_message_limit_is_refused_at_open(server, source):
    async def go():
        async with AsyncReenactClient(server.address) as client:
            await client.open_session(session_config(source, output_size=(1024, 1024),
                                                     output_format="RAW_RGB24"))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(go())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_message_bytes" in err.value.details() and "1024x1024" in err.value.details()


# ---- 8. aio clients during a drain ---------------------------------------------------------------


def test_aio_client_streaming_through_a_drain_gets_unavailable_and_every_reply(reenactor, source,
                                                                             frames):
    st = server_thread(reenactor, max_in_flight=2)

    async def go():
        async with AsyncReenactClient(st.address) as client:
            session = await client.open_session(session_config(source, output_size=OUT))
            endless = (frames[i % len(frames)] for i in range(10_000))
            results, status = [], None
            try:
                async for r in session.run(endless, pace_fps=20, decode=False):
                    results.append(r)
                    if len(results) == 3:
                        asyncio.get_running_loop().run_in_executor(None, st.drain, 20)
            except grpc.aio.AioRpcError as exc:
                status = exc.code()
            return results, status

    try:
        results, status = asyncio.run(go())
    finally:
        st.stop()
    assert status == grpc.StatusCode.UNAVAILABLE
    assert [r.frame_id for r in results] == list(range(len(results)))  # none lost
    assert {r.error_code for r in results} <= {"", "UNAVAILABLE"}
    assert sum(r.ok for r in results) >= 3


# ---- 6. every example in --help and the README is a tested one -----------------------------------


def _help(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli_main([command, "--help"])
    return out.getvalue()


def test_reenact_help_option_examples_are_accepted_by_the_server(server, source):
    text = " ".join(_help("reenact").split())
    examples = re.search(r"e\.g\. (.*?) \(", text).group(1)
    options = dict(item.strip().split("=") for item in examples.split(","))
    assert options, text
    check_options("geometric", options, 256)

    async def go():
        async with AsyncReenactClient(server.address) as client:
            session = await client.open_session(session_config(source, output_size=OUT,
                                                               options=options))
            session.call.cancel()
            return session.ready

    assert asyncio.run(go()).session_id


def test_readme_and_help_command_examples_parse_and_their_options_are_valid():
    parser, _ = build_parser()
    readme = (PROJECT_ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    lines = " ".join(blocks).replace("\\\n", " ").splitlines()
    commands = [line.split("#")[0].strip() for line in lines if line.strip().startswith("jr2net ")]
    assert len(commands) >= 5, commands
    for command in commands:
        argv = shlex.split(command)[1:]
        if "--help" in argv:
            with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as done:
                parser.parse_args(argv)
            assert done.value.code == 0, command
            continue
        args = parser.parse_args(argv)  # SystemExit on a bad example
        for item in getattr(args, "option", []) or []:
            key, _, value = item.partition("=")
            check_options("geometric", {key: value}, 256)
    serve_help = " ".join(_help("serve").split())
    for env in re.findall(r"(JR2NET_[A-Z_]+)=(\w+)", serve_help):
        name = env[0].removeprefix("JR2NET_").lower()
        if name not in ("config",):
            load_config({}, env={env[0]: env[1]})  # ValueError on a bad example


# ---- protocol refactor: the clients stand alone --------------------------------------------------


def test_importing_the_clients_does_not_import_the_server():
    code = ("import sys, jr2net.clients, jr2net.clients.client, jr2net.clients.reenact, "
            "jr2net.clients.loadgen; "
            "bad = sorted(m for m in sys.modules if m == 'jr2net.server' or "
            "m.startswith('jr2net.server.')); print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(PROJECT_ROOT), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_operations_doc_covers_every_setting_and_rejection_reason():
    from jr2net.server.config import SETTINGS

    doc = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    for name in SETTINGS:
        assert f"`{name}`" in doc, f"docs/operations.md does not document the setting {name}"
    source = "".join(p.read_text() for p in (PROJECT_ROOT / "server").glob("*.py"))
    reasons = set(re.findall(r'reason="(\w+)"', source))
    reasons |= set(re.findall(r'_refuse\(\s*context,\s*grpc\.StatusCode\.\w+,\s*"(\w+)"', source))
    assert {"malformed", "write_stall", "sessions_full"} <= reasons
    for reason in reasons:
        assert f"`{reason}`" in doc, f"docs/operations.md does not list rejected reason {reason}"


def test_no_client_module_imports_the_server_even_lazily():
    import ast

    for path in sorted((PROJECT_ROOT / "clients").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad = [n for n in names if n == "jr2net.server" or n.startswith("jr2net.server.")]
            assert not bad, f"{path.name}:{node.lineno} imports {bad[0]}"


def test_the_geometric_paths_own_options_are_accepted_at_open_and_their_ranges_checked():
    from server.options import OptionError, check_options

    check_options("geometric", {"mouth": "synthetic", "gaze": "0", "temporal_filter": "1",
                                "still_threshold": "0.01", "full_res_face": "no"}, 256)
    for bad in ({"mouth": "grey"}, {"still_threshold": "nan"}, {"still_threshold": "2"},
                {"gaze": "maybe"}):
        with pytest.raises(OptionError, match=next(iter(bad))):
            check_options("geometric", bad, 256)
