"""commands.py: the catalog builds what the builders and the spec's examples build, and refuses bad
parameters with a typed error naming the item."""

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hj212gw.protocol.builders import (
    Target,
    build_control,
    build_get_time,
    build_new_key,
    build_realtime,
    build_running_state,
    build_set_min_interval,
    build_set_password,
    build_set_rtd_interval,
    build_set_time,
    build_set_timeouts,
)
from hj212gw.protocol.commands import (
    CATALOG,
    BadCommandParams,
    CommandError,
    UnknownCommand,
    build_command,
    check_params,
    find_command,
    mask_secrets,
)
from hj212gw.protocol.constants import Cn, ProtocolVersion
from hj212gw.protocol.cp import HistoryRequestCp
from hj212gw.protocol.decoder import decode_frame
from hj212gw.protocol.framing import parse_frame

MN = "010000A8900016F000169DC0"
WATER = Target(MN, "123456", "32")
AIR = Target(MN, "123456", "31")
QN = "20240315080500001"


def build(name: str, target: Target = WATER, qn: str = QN, **params: object) -> bytes:
    spec = find_command(name)
    return build_command(spec, target, qn, check_params(spec, params))


def test_names_and_cns_are_unique_and_every_cn_is_the_standards() -> None:
    assert len({spec.name for spec in CATALOG}) == len(CATALOG)
    assert len({spec.cn for spec in CATALOG}) == len(CATALOG)
    assert all(spec.cn in set(Cn) for spec in CATALOG)


def test_every_history_command_takes_a_range_and_names_the_cn_its_data_comes_on() -> None:
    for spec in CATALOG:
        if spec.answer == "history":
            assert {"BeginTime", "EndTime"} <= {p.name for p in spec.params}, spec.name
            assert spec.data_cn is not None
    assert find_command("fetch_alarm_records").data_cn == "2072"
    assert find_command("get_time").data_cn == "1011"
    assert find_command("set_time").data_cn is None
    assert not find_command("stop_realtime").expects_result and find_command("set_time").expects_result


@pytest.mark.parametrize(
    ("wire", "name", "target", "params"),
    [
        (  # §12 E3: history fetch of two hours
            b"##0134QN=20240316083000123;ST=31;CN=2061;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
            b"CP=&&BeginTime=20240315000000;EndTime=20240315010000&&4680\r\n",
            "fetch_hour_history", AIR, {"BeginTime": "20240315000000", "EndTime": "20240315010000"},
        ),
        (  # §12 E4: set the time after a 1013
            b"##0112QN=20240315120001000;ST=32;CN=1012;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
            b"CP=&&SystemTime=20240315120001&&1E00\r\n",
            "set_time", WATER, {"SystemTime": "20240315120001"},
        ),
        (
            b"##0108QN=20240315080500001;ST=32;CN=1000;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
            b"CP=&&OverTime=10;ReCount=3&&3E80\r\n",
            "set_timeouts", WATER, {"OverTime": 10, "ReCount": "3"},
        ),
        (
            b"##0101QN=20240315080500002;ST=32;CN=1064;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
            b"CP=&&MinInterval=10&&B981\r\n",
            "set_min_interval", WATER, {"MinInterval": 10},
        ),
        (
            b"##0101QN=20240315080500003;ST=32;CN=1062;PW=123456;MN=010000A8900016F000169DC0;Flag=5;"
            b"CP=&&RtdInterval=30&&BB01\r\n",
            "1062", WATER, {"RtdInterval": "30"},
        ),
        (
            b"##0087QN=20240315080500004;ST=32;CN=2012;PW=123456;MN=010000A8900016F000169DC0;Flag=5;CP=&&&&B101\r\n",
            "stop_realtime", WATER, {},
        ),
    ],
    ids=["e3-2061", "e4-1012", "1000", "1064", "1062", "2012"],
)  # fmt: skip
def test_the_spec_examples_are_built_byte_for_byte(
    wire: bytes, name: str, target: Target, params: dict[str, object]
) -> None:
    qn = parse_frame(wire).segment.split(b";")[0].removeprefix(b"QN=").decode()
    assert build(name, target, qn, **params) == wire


@pytest.mark.parametrize("version", list(ProtocolVersion))
def test_the_catalog_builds_what_the_builders_build(version: ProtocolVersion) -> None:
    t = Target(MN, "123456", "32", version)
    assert build("set_timeouts", t, OverTime=5, ReCount=3) == build_set_timeouts(t, QN, 5, 3)
    assert build("get_time", t) == build_get_time(t, QN)
    assert build("get_time", t, PolId="w01018") == build_get_time(t, QN, "w01018")
    assert build("set_time", t, PolId="w01018", SystemTime="20240315120001") == build_set_time(
        t, QN, "20240315120001", "w01018"
    )
    assert build("set_rtd_interval", t, RtdInterval=3600) == build_set_rtd_interval(t, QN, 3600)
    assert build("set_min_interval", t, MinInterval=15) == build_set_min_interval(t, QN, 15)
    assert build("set_password", t, NewPW="654321") == build_set_password(t, QN, "654321")
    assert build("start_realtime", t) == build_realtime(t, QN, start=True)
    assert build("stop_running_state", t) == build_running_state(t, QN, start=False)
    assert build("calibrate", t, PolId="w01018", CalibrationType=1) == build_control(
        t, "3011", QN, "w01018", CalibrationType="1"
    )
    key = {"SKCreateTime": "20240315120001000", "NewSK": "0000000000000000"}
    assert build("set_key", t, **key) == build_new_key(t, QN, key["SKCreateTime"], key["NewSK"])


def test_a_fetch_parses_back_as_the_history_request_it_is() -> None:
    packet = decode_frame(
        parse_frame(build("fetch_minute_history", BeginTime="20240315000000", EndTime="20240315235900"))
    )
    assert isinstance(packet.data, HistoryRequestCp)
    assert (packet.data.begin_time, packet.data.end_time) == ("20240315000000", "20240315235900")
    assert packet.flag == 5 and packet.cn == "2051"


def test_a_site_parameter_is_sent_as_info_id_and_its_info_item() -> None:
    wire = build("set_site_parameter", PolId="w01018", InfoId="i13004", Info="168.0")
    assert b"CP=&&PolId=w01018;InfoId=i13004;i13004-Info=168.0&&" in wire


@pytest.mark.parametrize(
    ("name", "params", "says"),
    [
        ("set_timeouts", {"OverTime": 100, "ReCount": 3}, "OverTime must be an integer from 1 to 99"),
        ("set_timeouts", {"OverTime": 10}, "needs ReCount"),
        ("set_rtd_interval", {"RtdInterval": 29}, "from 30 to 3600"),
        ("set_min_interval", {"MinInterval": 7}, "one of 1, 2, 3"),
        ("set_password", {"NewPW": "12345"}, "six characters"),
        ("set_time", {"SystemTime": "20241301000000"}, "valid month"),
        ("fetch_hour_history", {"BeginTime": "20240315010000", "EndTime": "20240315000000"}, "is after EndTime"),
        ("get_site_info", {"InfoId": "i12001", "BeginTime": "20240315000000"}, "go together"),
        ("get_time", {"SystemTime": "20240315000000"}, "takes PolId; not SystemTime"),
        ("get_time", {"PolId": True}, "must be text or an integer"),
        ("sample_now", {"PolId": "w01;018"}, "a factor code"),
        ("set_report_time", {"Report;Time": "0800"}, "is not a CP item"),
    ],
)
def test_bad_params_are_a_typed_error_naming_the_item(name: str, params: dict[str, object], says: str) -> None:
    with pytest.raises(BadCommandParams, match=says) as caught:
        check_params(find_command(name), params)
    assert caught.value.reason == "bad_params"


def test_an_unknown_cn_or_name_is_a_typed_error() -> None:
    for given_name in ("9999", "set_everything", "9011", "2081"):
        with pytest.raises(UnknownCommand):
            find_command(given_name)
    assert find_command("1012") is find_command("set_time")


def test_secret_items_are_masked_for_display() -> None:
    assert mask_secrets(find_command("set_password"), {"NewPW": "654321"}) == {"NewPW": "***"}
    assert mask_secrets(find_command("set_time"), {"SystemTime": "1"}) == {"SystemTime": "1"}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(CATALOG),
    st.dictionaries(
        st.sampled_from(["PolId", "BeginTime", "EndTime", "SystemTime", "OverTime", "ReCount", "InfoId", "x"]),
        st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none()),
        max_size=5,
    ),
)
def test_any_params_give_items_of_cp_syntax_or_a_typed_error(spec: object, params: dict[str, object]) -> None:
    try:
        items = check_params(spec, params)  # type: ignore[arg-type]
    except CommandError:
        return
    for name, value in items:
        assert not set(name + value) & set(";&=,") and value


def test_docs_protocol_lists_every_command_of_the_catalog() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| (\d{4}) \| `([a-z_]+)` \|", text, re.MULTILINE))
    assert listed == {(spec.cn, spec.name) for spec in CATALOG}
