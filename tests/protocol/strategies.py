"""Hypothesis strategies shared by the protocol tests: header fields, CP items, whole segments."""

from hypothesis import strategies as st

from hj212gw.protocol.constants import Cn

CNS = sorted(c.value for c in Cn)
VERSIONS = (0, 1, 2)  # 2005, 2017, 2025

digits = st.text("0123456789", min_size=1, max_size=8)
value = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-1e6, max_value=1e6).map(str),
    st.sampled_from(["N", "F", "M", "S", "D", "C", "T", "B", "P", "0", "1", "St"]),
    digits,
)
code = st.from_regex(r"\A[aw][0-9]{5}\Z|\A[0-9]{3}\Z|\AB0[12]\Z|\AS0[1-8]\Z")
suffix = st.sampled_from(["Rtd", "Avg", "Min", "Max", "Cou", "Flag", "ZsAvg", "SampleTime", "EFlag", "Data"])


@st.composite
def cp_items(draw: st.DrawFn, cn: str) -> list[tuple[str, str]]:
    """Items for `cn`: DataTime plus factor fields, or parameters, or a fetch window."""
    items: list[tuple[str, str]] = []
    kind = draw(st.sampled_from(["data", "params", "fetch", "empty"]))
    if kind == "data":
        items.append(("DataTime", draw(st.from_regex(r"\A20[0-9]{12}\Z"))))
        for factor in draw(st.lists(code, max_size=5, unique=True)):
            for sfx in draw(st.lists(suffix, min_size=1, max_size=4, unique=True)):
                items.append((f"{factor}-{sfx}", draw(value)))
    elif kind == "params":
        names = ["PolId", "SystemTime", "RtdInterval", "MinInterval", "OverTime", "ReCount", "NewPW", "QnRtn", "ExeRtn"]
        for name in draw(st.lists(st.sampled_from(names), max_size=4, unique=True)):
            items.append((name, draw(digits)))
    elif kind == "fetch":
        items += [("BeginTime", draw(st.from_regex(r"\A20[0-9]{12}\Z"))), ("EndTime", "20240101000000")]
    return items


@st.composite
def header(draw: st.DrawFn, cn: str | None = None) -> list[tuple[str, str]]:
    version = draw(st.sampled_from(VERSIONS))
    cn = cn or draw(st.sampled_from(CNS))
    split = draw(st.booleans())
    flag = version << 2 | (2 if split else 0) | draw(st.sampled_from([0, 1]))
    fields = []
    if version or draw(st.booleans()):
        fields.append(("QN", draw(st.from_regex(r"\A20[0-9]{15}\Z"))))
    fields.append(("ST", draw(st.sampled_from(["21", "22", "31", "32", "44", "91"]))))
    fields.append(("CN", cn))
    fields.append(("PW", draw(st.from_regex(r"\A[0-9a-zA-Z]{6}\Z"))))
    fields.append(("MN", draw(st.from_regex(r"\A[0-9A-F]{24}\Z|\ALD[0-9]{12}\Z"))))
    if version or draw(st.booleans()):
        fields.append(("Flag", str(flag)))
    if split:
        pnum = draw(st.integers(1, 99))
        fields += [("PNUM", str(pnum)), ("PNO", str(draw(st.integers(1, pnum))))]
    if version == 2 and draw(st.booleans()):
        fields.append(("RF", "1"))
    return fields


@st.composite
def packets_segments(draw: st.DrawFn) -> bytes:
    """A whole data segment `QN;ST;CN;PW;MN;Flag;[PNUM;PNO;][RF;]CP=&&…&&`."""
    fields = draw(header())
    cn = dict(fields)["CN"]
    items = draw(cp_items(cn))
    sep = draw(st.sampled_from([";", ","]))
    cp = sep.join(f"{k}={v}" for k, v in items)
    head = "".join(f"{k}={v};" for k, v in fields)
    return f"{head}CP=&&{cp}&&".encode()
