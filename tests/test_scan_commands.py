"""Scan command model and reply parsing (protocols/scan-server.md 3.4-3.8): sans-I/O, no sockets."""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET

import pytest

from katclient.devices.scan import (
    CommandSequence,
    Comment,
    ConfigLog,
    Delay,
    If,
    Include,
    Log,
    Loop,
    Parallel,
    ScanXMLError,
    Script,
    Sequence,
    Set,
    Wait,
    addressed,
    createTable,
    parse_commands,
)
from katclient.devices.scan.model import (
    ScanInfo,
    ScanSubmitError,
    UnknownScanError,
    error_from_response,
    parse_data,
    parse_devices,
    parse_id,
    parse_scan_info,
    parse_scan_infos,
    parse_serial,
    parse_server_info,
    parse_simulation,
    parse_xml,
)
from katclient.errors import InvalidUsage, OperationFailure, ProtocolError


def children(elem: ET.Element) -> dict[str, str]:
    return {c.tag: (c.text or "") for c in elem}


# ---------------------------------------------------------------------------------------------
# XML produced (what PyScanClient emits, section 3.8 table)
# ---------------------------------------------------------------------------------------------


def test_set_xml_follows_pyscanclient() -> None:
    plain = Set("motor_x", 10).to_element()
    assert [c.tag for c in plain] == ["device", "value", "wait"]
    assert children(plain) == {"device": "motor_x", "value": "10", "wait": "false"}
    text = Set("shutter", "open").to_element()
    assert children(text)["value"] == '"open"'
    full = Set("x", 1.5, completion=True, readback="x_rb", readback_value=2, tolerance=0.2, timeout=5,
               errhandler="OnErrorContinue").to_element()
    assert [c.tag for c in full] == ["device", "value", "completion", "wait", "readback", "readback_value",
                                     "tolerance", "timeout", "error_handler"]
    assert children(full) == {"device": "x", "value": "1.5", "completion": "true", "wait": "true",
                              "readback": "x_rb", "readback_value": "2", "tolerance": "0.2",
                              "timeout": "5.0", "error_handler": "OnErrorContinue"}
    # readback=True names the device itself; timeout only when completion or readback
    assert children(Set("x", 1, readback=True).to_element())["readback"] == "x"
    assert "timeout" not in children(Set("x", 1, timeout=5).to_element())


def test_loop_wait_and_if_xml() -> None:
    loop = Loop("x", 0, 5, 0.5, Set("y", 1), Delay(2)).to_element()
    assert [c.tag for c in loop] == ["device", "start", "end", "step", "wait", "body"]
    assert children(loop)["wait"] == "false"
    assert [c.tag for c in loop.find("body")] == ["set", "delay"]
    empty = Loop("x", 1, 2, 1).to_element()
    assert empty.find("body") is not None and len(empty.find("body")) == 0
    rb = Loop("x", 0, 5, 1, readback=True, timeout=3).to_element()
    assert children(rb)["tolerance"] == "0.1"  # abs(step)/10 by default
    assert children(rb)["timeout"] == "3.0"
    wait = Wait("counts", 1e12, comparison=">=", timeout=10).to_element()
    assert children(wait) == {"device": "counts", "value": "1000000000000.0", "comparison": "AT_LEAST",
                              "timeout": "10.0"}
    assert "tolerance" not in children(Wait("x", 1).to_element())
    cond = If("pv1", "=", 10, [Comment("It's 10")]).to_element()
    assert [c.tag for c in cond] == ["device", "comparison", "value", "tolerance", "body"]
    assert children(cond)["comparison"] == "EQUALS"


def test_other_commands_xml() -> None:
    assert children(Comment("Hello").to_element()) == {"text": "Hello"}
    assert children(ConfigLog(False).to_element()) == {"automatic": "false"}
    assert children(Delay(2.5).to_element()) == {"seconds": "2.5"}
    log = Log("a", "b").to_element()
    assert [d.text for d in log.find("devices")] == ["a", "b"]
    assert Log(["a", "b"]) == Log("a", "b")
    inc = Include("PrepMotor.scn", macros="motor=MyMotor1").to_element()
    assert children(inc) == {"scan_file": "PrepMotor.scn", "macros": "motor=MyMotor1"}
    script = Script("MyScript", "pos", 42.3).to_element()
    assert script.findtext("path") == "MyScript"
    assert [a.text for a in script.find("arguments")] == ["pos", "42.3"]
    par = Parallel(Delay(1), Delay(2), timeout=10).to_element()
    assert [c.tag for c in par] == ["timeout", "body"]
    assert [c.tag for c in Sequence(Comment("a"), Sequence(Comment("b"))).to_element().find("body")] == [
        "comment", "sequence"]


def test_sequence_xml_layout_and_round_trip() -> None:
    seq = CommandSequence(Comment("Hello"), [Set("motor_x", 10)])
    seq.append(Loop("motor_x", 1, 10, 1, Set("neutrons", 0), Log("motor_x", "neutrons")))
    xml = seq.genSCN()
    assert xml.startswith("<commands>\n  <comment>\n    <text>Hello</text>")
    assert "<?xml" not in xml
    assert parse_commands(xml) == seq
    assert CommandSequence.from_xml(xml.encode()) == seq
    assert len(seq) == 3 and seq[0] == Comment("Hello")
    assert seq.format().startswith("[\n  Comment('Hello'),")


def test_carriage_return_survives_xml() -> None:
    seq = CommandSequence(Comment("a\r\nb\tc <&> \"q\""))
    assert parse_commands(seq.to_xml()) == seq


# ---------------------------------------------------------------------------------------------
# XML parsed: server defaults and the server's own re-serialisation
# ---------------------------------------------------------------------------------------------


def test_server_defaults_apply_to_missing_elements() -> None:
    seq = parse_commands(
        "<commands><set><device>x</device><value>5</value></set>"
        "<loop><device>y</device><body/></loop>"
        "<wait><device>z</device><comparison>BOGUS</comparison></wait>"
        "<if><device>d</device><value>\"on\"</value></if></commands>")
    s, loop, w, cond = seq
    assert isinstance(s, Set) and s.readback is True and s.wait and s.tolerance == 0.1 and s.value == 5
    assert isinstance(loop, Loop) and (loop.start, loop.end, loop.step) == (0, 10, 1)
    assert loop.wait and loop.tolerance == 0.1
    assert isinstance(w, Wait) and w.comparison == "EQUALS" and w.value == 0
    assert isinstance(cond, If) and cond.value == "on" and cond.tolerance == 0.1


def test_server_style_xml_parses() -> None:
    xml = """<commands>
  <set>
    <device>motor_x</device>
    <value>10.0</value>
    <wait>false</wait>
    <tolerance>0.1</tolerance>
  </set>
  <set>
    <device>shutter</device>
    <value>"open"</value>
    <readback>shutter_rb</readback>
    <readback_value>"opened"</readback_value>
    <tolerance>0.1</tolerance>
    <timeout>5.0</timeout>
    <error_handler>OnErrorContinue</error_handler>
  </set>
  <script><path>S</path><arguments><argument>1</argument><argument/></arguments></script>
  <comment><address>7</address><text>old clients send an address</text></comment>
</commands>"""
    a, b, c, d = parse_commands(xml)
    assert a == Set("motor_x", 10)
    assert b == Set("shutter", "open", readback="shutter_rb", readback_value="opened", tolerance=0.1,
                    timeout=5, errhandler="OnErrorContinue")
    assert c == Script("S", "1", "")
    assert d == Comment("old clients send an address")


@pytest.mark.parametrize("xml, message", [
    ("<scan/>", "Wrong document type"),
    ("<commands><foo/></commands>", "Unknown scan command ID foo"),
    ("<commands><log/></commands>", "Missing 'devices'"),
    ("<commands><loop><start>abc</start></loop></commands>", "Invalid number"),
    ("<commands><delay>", "Malformed"),
    ("", "Malformed"),
    ('<!DOCTYPE x [<!ENTITY a "aaaa">]><commands/>', "DOCTYPE"),
    ('<?xml version="1.0"?><!DOCTYPE commands SYSTEM "http://example.invalid/x.dtd"><commands/>', "DOCTYPE"),
])
def test_bad_command_xml(xml: str, message: str) -> None:
    with pytest.raises(ScanXMLError, match=message) as info:
        parse_commands(xml)
    assert isinstance(info.value, ProtocolError) and isinstance(info.value, ValueError)


def test_nesting_is_bounded() -> None:
    deep = "<commands>" + "<sequence><body>" * 200 + "</body></sequence>" * 200 + "</commands>"
    with pytest.raises(ScanXMLError, match="nested"):
        parse_commands(deep)


def test_billion_laughs_refused_quickly() -> None:
    entities = "".join(
        '<!ENTITY lol{} "{}">'.format(i, ("&lol%s;" % (i - 1 if i > 1 else "")) * 10) for i in range(1, 9))
    bomb = f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">{entities}]><lolz>&lol8;</lolz>'
    with pytest.raises(ScanXMLError, match="DOCTYPE"):
        parse_xml(bomb)
    with pytest.raises(ScanXMLError, match="ENTITY|DOCTYPE|Malformed"):
        parse_xml(b'<!ENTITY x "y"><a/>')


# ---------------------------------------------------------------------------------------------
# Model rules
# ---------------------------------------------------------------------------------------------


def test_equality_is_semantic() -> None:
    assert Set("x", 1, tolerance=0.5) == Set("x", 1)  # no readback: the tolerance is not used
    assert Set("x", 1, readback="x") == Set("x", 1, readback=True)
    assert Set("x", 1, readback=True, tolerance=0.5) != Set("x", 1, readback=True)
    assert Set("x", 10) == Set("x", 10.0)
    assert Set("x", "10") != Set("x", 10)
    assert Loop("x", 1, 2, 1, Delay(1)) != Loop("x", 1, 2, 1, Delay(2))
    assert Comment("a") != Comment("a", errhandler="H")
    assert Comment("a") != Delay(1)
    with pytest.raises(TypeError):
        hash(Comment("a"))


@pytest.mark.parametrize("make", [
    lambda: Set("x", float("nan")),
    lambda: Delay(-1),
    lambda: Loop("x", 0, 1, 0),
    lambda: Wait("x", 1, comparison="~"),
    lambda: If("x", "increase by", 1),
    lambda: Comment("bell\x07"),
    lambda: Set("x", [1, 2]),
    lambda: Loop("x", 1, 2, 1, "not a command"),
    lambda: CommandSequence(["not a command"]),
])
def test_invalid_commands_raise_invalid_usage(make: object) -> None:
    with pytest.raises(InvalidUsage):
        make()  # type: ignore[operator]


def test_comparisons_and_aliases() -> None:
    assert Wait("x", 1, "increase by").comparison == "INCREASE_BY"
    assert Wait("x", 1, "AT_MOST").comparison == "AT_MOST"
    assert Wait("x", "[1, 2]", "in").value == "[1, 2]"
    assert Wait("x", 5, "in").value == "5"
    assert Set("x", True).value == 1
    assert Parallel(Delay(1), errHandler="H").errhandler == "H"
    loop = Loop("x", 1, 2, 1)
    loop.setReadback(True)
    loop.setTolerance(0.3)
    loop.setTimeout(4)
    loop.setCompletion(True)
    assert loop.wait and loop.getBody() == [] and loop.getDevice() == "x"
    assert repr(loop) == "Loop('x', 1, 2, 1, completion=True, readback=True, tolerance=0.3, timeout=4.0)"
    assert eval(repr(loop)) == loop  # repr is valid Python with the seed's names


def test_addresses_are_preorder() -> None:
    cmds = [Comment("a"), Loop("x", 1, 2, 1, Delay(1), Delay(2)), Parallel(Comment("p")), Comment("b")]
    assert [(a, type(c).__name__) for a, c in addressed(cmds)] == [
        (0, "Comment"), (1, "Loop"), (2, "Delay"), (3, "Delay"), (4, "Parallel"), (5, "Comment"), (6, "Comment")]


# ---------------------------------------------------------------------------------------------
# Replies
# ---------------------------------------------------------------------------------------------

SCAN_XML = """<?xml version="1.0" encoding="UTF-8"?>
<scan>
  <id>7</id>
  <name>Data Demo</name>
  <created>1427913270352</created>
  <state>Running</state>
  <runtime>1500</runtime>
  <total_work_units>40</total_work_units>
  <performed_work_units>10</performed_work_units>
  <finish>1427913290352</finish>
  <address>3</address>
  <command>Delay 1.0 sec. Remaining: 00:00:01</command>
</scan>
"""


def test_scan_info() -> None:
    info = parse_scan_info(SCAN_XML)
    assert info == ScanInfo(7, "Data Demo", 1427913270352, "Running", 1500, 3,
                            "Delay 1.0 sec. Remaining: 00:00:01", 40, 10, 1427913290352, None)
    assert info.percentage() == 25 and not info.isDone() and not info.done
    assert info.createdDatetime() == datetime.datetime.fromtimestamp(1427913270.352)
    assert str(info) == "'Data Demo' [7]: Running, 25 %"
    idle = parse_scan_info("<scan><id>1</id><name></name><created>0</created><state>Idle</state>"
                           "<runtime>0</runtime><address>-1</address><command/></scan>")
    assert idle.percentage() == 0 and idle.total_work_units == 0 and idle.finish is None and idle.name == ""
    failed = parse_scan_info(SCAN_XML.replace("Running", "Failed").replace(
        "</command>", "</command><error>Timeout while waiting for x = 5.0</error>"))
    assert failed.is_done() and failed.error == "Timeout while waiting for x = 5.0"
    scheduled = parse_scan_info(SCAN_XML.replace("Running", "Scheduled"))
    assert not scheduled.done  # an unknown future state is not "done" (Phoebus PR #3622)
    both = parse_scan_infos(f"<scans>{SCAN_XML.split('?>', 1)[1]}{SCAN_XML.split('?>', 1)[1]}</scans>")
    assert both == [info, info]


@pytest.mark.parametrize("mutate", [
    lambda x: x.replace("<state>Running</state>", ""),
    lambda x: x.replace("<id>7</id>", "<id>seven</id>"),
    lambda x: x.replace("scan>", "scans>"),
    lambda x: x[:40],
])
def test_bad_scan_info(mutate: object) -> None:
    with pytest.raises(ScanXMLError):
        parse_scan_info(mutate(SCAN_XML))  # type: ignore[operator]


def test_other_replies() -> None:
    assert parse_id("<id>42</id>\n") == 42
    with pytest.raises(ScanXMLError, match="Expected scan <id>, got <error>"):
        parse_id("<error/>")
    assert parse_serial("<serial>-1</serial>") == -1
    server = parse_server_info(
        '<?xml version="1.0" encoding="UTF-8"?><server><version>4.7.0</version><start_time>12</start_time>'
        "<scan_config>file:/x.xml</scan_config><script_paths>a, b</script_paths><macros>M=1</macros>"
        "<used_mem>1</used_mem><max_mem>2</max_mem><non_heap>3</non_heap></server>")
    assert (server.version, server.start_time, server.script_paths, server.max_mem) == ("4.7.0", 12, ("a", "b"), 2)
    assert str(server).startswith("<?xml")
    sim = parse_simulation("<simulation><log><![CDATA[Simulation:\n--------\n]]></log><seconds>12.5</seconds>"
                           "</simulation>")
    assert sim["simulation"] == "Simulation:\n--------\n" and sim["seconds"] == 12.5
    devices = parse_devices("<devices><device><name>a</name><alias>A</alias><status>1.0</status></device>"
                            "<device><name>b</name></device></devices>")
    assert [(d.name, d.alias, d.status) for d in devices] == [("a", "A", "1.0"), ("b", "b", "")]


DATA_XML = """<?xml version="1.0" encoding="UTF-8"?>
<data>
  <device><name>motor_x</name><samples>
    <sample id="0"><time>100</time><value>1.0</value></sample>
    <sample id="3"><time>130</time><value>2.0</value></sample>
  </samples></device>
  <device><name>neutrons</name><samples>
    <sample id="0"><time>100</time><value>5.0</value></sample>
    <sample id="2"><time>120</time><value>[1.0, 2.0]</value></sample>
  </samples></device>
  <device><name>motor_y</name><samples>
    <sample id="1"><time>110</time><value>7.0</value></sample>
  </samples></device>
</data>
"""


def test_data_and_create_table() -> None:
    data = parse_data(DATA_XML)
    assert data["motor_x"] == {"id": [0, 3], "time": [100, 130], "value": [1.0, 2.0]}
    assert data["neutrons"]["value"] == [5.0, "[1.0, 2.0]"]
    assert parse_data("<data/>") == {}
    # one row per serial of the listed devices; a missing sample repeats the previous value
    assert createTable(data, "motor_x", "neutrons") == [[1.0, 1.0, 2.0], [5.0, "[1.0, 2.0]", "[1.0, 2.0]"]]
    assert createTable(data, "motor_y", "motor_x") == [[None, 7.0, 7.0], [1.0, 1.0, 2.0]]
    with pytest.raises(InvalidUsage, match="nope"):
        createTable(data, "nope")


def test_error_bodies() -> None:
    jetty = (b"<html>\n<head>\n<title>Error 500 Unknown scan ID 42</title>\n</head>\n<body><h2>HTTP ERROR 500 "
             b"Unknown scan ID 42</h2>\n<table>\n<tr><th>MESSAGE:</th><td>Unknown scan ID 42</td></tr>\n"
             b"</table>\n</body>\n</html>\n")
    err = error_from_response(500, jetty, "text/html")
    assert isinstance(err, UnknownScanError) and isinstance(err, OperationFailure)
    assert err.status == 500 and err.reason == "Unknown scan ID 42" and err.scan_id == 42
    submit = (b"<error><message>X failed to submit</message><trace>java.lang.Exception: Unknown scan command "
              b"ID foo\n\tat a.b.C.d(C.java:1)\n</trace></error>")
    err2 = error_from_response(400, submit, "text/xml")
    assert isinstance(err2, ScanSubmitError)
    assert err2.reason == "X failed to submit" and err2.detail == "Unknown scan command ID foo"
    assert "Unknown scan command ID foo" in str(err2)
    empty = error_from_response(400, b"")
    assert empty.reason == "HTTP 400"
    escaped = error_from_response(400, b"<title>Error 400 Unknown command &apos;x&apos;</title>")
    assert escaped.reason == "Unknown command 'x'"
