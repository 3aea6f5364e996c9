"""cp.py: the typed model for each CN, tokenizing with `;`/`,` and `//…//` log text."""

import pytest

from hj212gw.protocol.cp import (
    DataCp,
    EmptyCp,
    ExecutionResultCp,
    GenericCp,
    HardwareSerialCp,
    HistoryRequestCp,
    IntervalCp,
    KeyExchangeCp,
    NewPasswordCp,
    PolIdCommandCp,
    RequestReplyCp,
    RestartCp,
    SetMnCp,
    SiteInfoCp,
    SystemTimeCp,
    TimeoutsCp,
    encode_readings,
    parse_cp,
    tokenize_cp,
)
from hj212gw.protocol.errors import BadCpItem


@pytest.mark.parametrize(
    ("cn", "text", "model"),
    [
        ("2011", "DataTime=20240101000000;a-Rtd=1,a-Flag=N", DataCp),
        ("2013", "DataTime=20240101000000;a-Avg=1", DataCp),
        ("2052", "DataTime=20240101000000;LA-Data=50", DataCp),
        ("2062", "DataTime=20240101000000;w01018-SampleRd=1", DataCp),
        ("2111", "DataTime=20240101000000;a01901-Avg=850", DataCp),
        ("2073", "DataTime=20240101000000;011-Ala=1", DataCp),
        ("8013", "DataTime=20240101000000;x-Info=1", DataCp),
        ("2061", "BeginTime=20240101000000;EndTime=20240101010000", HistoryRequestCp),
        ("2061", "BeginTime=20240101000000,EndTime=20240101010000", HistoryRequestCp),
        ("3020", "DataTime=20240101000000;PolId=w01018;i11001-Info=//a;b,c//", SiteInfoCp),
        ("2081", "DataTime=20240101000000;RestartTime=20231231235900", RestartCp),
        ("9011", "QnRtn=1", RequestReplyCp),
        ("9012", "ExeRtn=100", ExecutionResultCp),
        ("9013", "", EmptyCp),
        ("9015", "", EmptyCp),
        ("1011", "PolId=w01018;SystemTime=20240101000000", SystemTimeCp),
        ("1000", "OverTime=5;ReCount=3", TimeoutsCp),
        ("1062", "RtdInterval=30", IntervalCp),
        ("1061", "", EmptyCp),
        ("1072", "NewPW=654321", NewPasswordCp),
        ("1013", "PolId=w01018", PolIdCommandCp),
        ("3011", "PolId=w01018,CalibrationType=0", PolIdCommandCp),
        ("1001", "i23005-Info=X;i23006-Info=Y;i23007-Info=M1;i23008-Info=M2", HardwareSerialCp),
        ("1002", "i23005-Info=X", SetMnCp),
        ("1014", "SKCreateTime=20240601085857223,NewSK=0000000000000000", KeyExchangeCp),
        ("3043", "Anything=1", GenericCp),
    ],
)
def test_model_per_cn(cn: str, text: str, model: type) -> None:
    assert type(parse_cp(cn, text)) is model


def test_readings_group_by_factor_and_map_2005_codes() -> None:
    data = parse_cp("2011", "DataTime=20160824003817;011-Rtd=231.0,011-Flag=N;B01-Rtd=36.91")
    assert isinstance(data, DataCp)
    assert [(r.code, r.code_2017) for r in data.readings] == [("011", "w01018"), ("B01", "w00000")]
    assert data.readings[0].rtd == 231.0 and data.readings[0].flag == "N"
    assert (
        encode_readings(data.data_time, data.readings)
        == "DataTime=20160824003817;011-Rtd=231.0,011-Flag=N;B01-Rtd=36.91"
    )


def test_log_text_keeps_separators_and_bad_items_are_named() -> None:
    assert tokenize_cp("i11001-Info=//清洗;管路,完成//;PolId=w01018") == (
        ("i11001-Info", "//清洗;管路,完成//"),
        ("PolId", "w01018"),
    )
    with pytest.raises(BadCpItem):
        tokenize_cp("DataTime=1;garbage")


def test_2005_replies_carry_the_qn_in_cp() -> None:
    reply = parse_cp("9011", "QN=20160801085857223;QnRtn=1")
    assert isinstance(reply, RequestReplyCp) and reply.qn == "20160801085857223" and reply.qn_rtn == 1
