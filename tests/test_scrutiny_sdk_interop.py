"""Faithfulness of the fake Scrutiny server: the REAL Scrutiny SDK (scrutinydebugger 0.16.0) must
work against it (DESIGN.md section 5, "each fake is faithful enough that the real system's own
client works against it").

The SDK lives in its own virtual environment: the ``scrutiny_peer_python`` fixture
(tests/conftest.py) takes ``SCRUTINY_SDK_PYTHON`` if set, else creates the peer venv with
``tests/peers/scrutiny_server.sh install`` on first use.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from fake_servers.scrutiny_device import DEMO_FIRMWARE_ID, TEST_FIRMWARE_ID, make_test_sfd
from fake_servers.scrutiny_server import FakeScrutinyServer

UPLOADED_ID = "fedcba9876543210fedcba9876543210"

# Runs inside the SDK's venv; prints one JSON object with what it observed.
SDK_SCRIPT = r"""
import json, struct, sys, time
from scrutiny import sdk
from scrutiny.sdk.client import ScrutinyClient
from scrutiny.sdk.datalogging import DataloggingConfig, TriggerCondition, XAxisType

host, port, sfd_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {}

def failure(call):
    try:
        call()
    except sdk.exceptions.OperationFailure as exc:
        return str(exc)
    return None

client = ScrutinyClient(timeout=5)
client.listen_events(ScrutinyClient.Events.LISTEN_ALL)
with client.connect(host, port, wait_status=True):
    client.wait_device_ready(5)
    status = client.get_latest_server_status()
    out["comm_state"] = status.device_comm_state.name
    out["sfd_firmware_id"] = status.sfd_firmware_id
    out["demo_mode"] = status.device_link.demo_mode
    info = client.get_device_info()
    out["display_name"] = info.display_name
    out["forbidden"] = [[r.start, r.size] for r in info.forbidden_memory_regions]
    out["count"] = {k.name: v for k, v in client.get_watchable_count().items()}
    listing = client.download_watchable_list()
    listing.wait_for_completion(5)
    content = listing.get()
    out["vars"] = sorted(content.var)
    out["aliases"] = sorted(content.alias)
    out["rpvs"] = sorted(content.rpv)
    counter = client.watch("/static/main.cpp/counter")
    enable = client.watch("/static/main.cpp/counter_enable")
    rpv = client.watch("/rpv/x1000")
    counter.wait_update(5)
    rpv.wait_update(5)
    out["rpv_value_ok"] = 0.0 <= rpv.value < 1.0
    enable.value = True
    start = counter.value
    deadline = time.monotonic() + 5
    while counter.value <= start and time.monotonic() < deadline:
        counter.wait_update(5)
    out["counter_advanced"] = counter.value > start
    with client.batch_write(timeout=5):
        enable.value = False
        enable.value = False
    client.write_watchable("/global/sinewave_generator/frequency", "2+0.5")
    out["frequency"] = struct.unpack("<f", client.read_memory(0x1010, 4))[0]
    out["forbidden_read"] = failure(lambda: client.read_memory(0, 4))
    client.write_memory(0x1200, b"\x01\x02\x03")
    out["written"] = list(client.read_memory(0x1200, 3))
    out["readonly_write"] = failure(lambda: client.write_memory(0x1800, b"\x01"))
    answer = client.user_command(1, b"\x07\x08")
    out["user_command"] = [answer.subfunction, list(answer.data)]
    out["user_command_fail"] = failure(lambda: client.user_command(9))
    out["unknown_watch"] = failure(lambda: client.watch("/does/not/exist"))
    out["installed_before"] = sorted(client.get_installed_sfds())
    upload = client.init_sfd_upload(sfd_path)
    upload.start()
    upload.wait_for_completion(10)
    out["uploaded"] = upload.get_sfd_info().firmware_id
    out["installed_after"] = sorted(client.get_installed_sfds())
    download = client.download_sfd(out["uploaded"])
    download.wait_for_completion(10)
    out["download_size"] = len(download.get())
    out["loaded"] = client.get_loaded_sfd().firmware_id
    config = DataloggingConfig(sampling_rate=0, decimation=1, timeout=0, name="interop")
    config.configure_trigger(TriggerCondition.GreaterThan, operands=[counter, -1.0], position=0.5,
                             hold_time=0)
    config.configure_xaxis(XAxisType.MeasuredTime)
    axis = config.add_axis("Y")
    config.add_signal("/Sine Wave", axis, name="sine")
    config.add_signal(rpv, axis)
    request = client.start_datalog(config)
    request.wait_for_completion(20)
    acquisition = request.fetch_acquisition()
    out["acq_name"] = acquisition.name
    out["acq_points"] = len(acquisition.xdata.get_data())
    out["acq_series"] = [s.series.name for s in acquisition.get_data()]
    out["acq_lengths_match"] = all(
        len(s.series.get_data()) == out["acq_points"] for s in acquisition.get_data()
    )
    out["stored"] = [a.reference_id for a in client.list_stored_datalogging_acquisitions()]
    out["acq_ref"] = acquisition.reference_id
    client.update_datalogging_acquisition(acquisition.reference_id, "renamed")
    out["renamed"] = client.read_datalogging_acquisitions_metadata(acquisition.reference_id).name
    client.delete_datalogging_acquisition(acquisition.reference_id)
    out["after_delete"] = len(client.list_stored_datalogging_acquisitions())
    out["client_count"] = client.get_server_stats().client_count
    client.unwatch(rpv)
events = []
while True:
    event = client.read_event(timeout=0)
    if event is None:
        break
    events.append(type(event).__name__)
out["events"] = sorted(set(events))
print(json.dumps(out))
"""


async def test_real_sdk_against_the_fake(tmp_path: Path, scrutiny_peer_python: str) -> None:
    SDK_PYTHON = scrutiny_peer_python
    script = tmp_path / "sdk_script.py"
    script.write_text(SDK_SCRIPT)
    sfd = make_test_sfd()
    sfd.firmware_id = UPLOADED_ID
    sfd_file = tmp_path / "uploaded.sfd"
    sfd_file.write_bytes(sfd.to_bytes())

    fake = FakeScrutinyServer()
    host, port = await fake.start()
    try:
        env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "xdg"))
        proc = await asyncio.create_subprocess_exec(
            SDK_PYTHON,
            str(script),
            host,
            str(port),
            str(sfd_file),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.communicate()
            raise
        assert proc.returncode == 0, stderr.decode(errors="replace")
    finally:
        await fake.stop()

    out = json.loads(stdout.decode().strip().splitlines()[-1])
    assert out["comm_state"] == "ConnectedReady"
    assert out["sfd_firmware_id"] == DEMO_FIRMWARE_ID and out["demo_mode"] is True
    assert out["display_name"] == "EmulatedDevice"
    assert out["forbidden"] == [[0, 4096], [8192, 2**32 - 8192]]
    assert out["count"] == {"Variable": 5, "Alias": 6, "RuntimePublishedValue": 2, "VariableFactory": 0}
    assert out["vars"] == [
        "/global/device/uptime",
        "/global/sinewave_generator/frequency",
        "/global/sinewave_generator/output",
        "/static/main.cpp/counter",
        "/static/main.cpp/counter_enable",
    ]
    assert out["aliases"] == [
        "/Alias To RPV2000",
        "/Counter/Enable",
        "/Counter/Value",
        "/RPV1000 with gain 1000",
        "/Sine Wave",
        "/Up Time",
    ]
    assert out["rpvs"] == ["/rpv/x1000", "/rpv/x2000"] and out["rpv_value_ok"]
    assert out["counter_advanced"] is True
    assert out["frequency"] == 2.5
    assert out["forbidden_read"] == "Failed to read the device memory. Forbidden region"
    assert out["written"] == [1, 2, 3]
    assert out["readonly_write"] == "Failed to write the device memory. Read only"
    assert out["user_command"] == [1, [7, 8]]
    assert out["user_command_fail"].endswith("Device responded with code FailureToProceed")
    assert out["unknown_watch"] == "Failed to subscribe to the watchable. Unknown watchable : /does/not/exist"
    assert out["installed_before"] == [TEST_FIRMWARE_ID]
    assert out["uploaded"] == UPLOADED_ID
    assert out["installed_after"] == sorted([TEST_FIRMWARE_ID, UPLOADED_ID])
    assert out["download_size"] == sfd_file.stat().st_size
    assert out["loaded"] == DEMO_FIRMWARE_ID
    assert out["acq_name"] == "interop" and out["acq_points"] > 10 and out["acq_lengths_match"]
    assert out["acq_series"] == ["sine", "x1000"]
    assert out["stored"] == [out["acq_ref"]] and out["renamed"] == "renamed" and out["after_delete"] == 0
    assert out["client_count"] == 1
    for event in (
        "ConnectedEvent",
        "DeviceReadyEvent",
        "SFDLoadedEvent",
        "StatusUpdateEvent",
        "DataloggingStateChanged",
        "DataloggingListChanged",
        "DisconnectedEvent",
    ):
        assert event in out["events"]
