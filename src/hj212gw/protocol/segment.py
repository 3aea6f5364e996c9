"""Data segment <-> Packet (HJ 212-2017 §4): `QN;ST;CN;PW;MN;Flag;[PNUM;PNO;][RF;]CP=&&…&&`.

Lossless: `encode_segment(parse_segment(s)) == s` for every segment we accept without NUL bytes
in its CP, because the header keeps its field order and text and the CP keeps its text.
Tolerates what 2005 units and quirky firmware send (no QN, no Flag, other key orders, unknown
keys, fields after the CP, fields longer than the standard's widths up to protocol.limits),
and names each tolerance on the packet. NUL bytes, which PostgreSQL text cannot hold, are
removed from the named header values (`qn`, `st`, `pw`; `fields` keeps the wire text) and from
the CP (`nul_in_field`); an MN with a control character is rejected instead.
"""

from hj212gw.protocol.cp import parse_cp
from hj212gw.protocol.errors import BadEncoding, BadFieldValue, MissingField
from hj212gw.protocol.framing import Tolerance
from hj212gw.protocol.limits import MAX_HEADER_TOKEN, check_header, check_identity
from hj212gw.protocol.models import Packet

_CP_OPEN = b"CP=&&"


def split_segment(segment: bytes) -> tuple[str, bytes, bool, str]:
    """(header text, CP content bytes, closed, text after the closing `&&`).

    Raises:
        MissingField: no `CP=&&`.
        BadEncoding: the header is not ASCII.
    """
    open_at = segment.find(_CP_OPEN)
    if open_at < 0:
        raise MissingField("CP")
    try:
        header = segment[:open_at].decode("ascii")
    except UnicodeDecodeError as exc:
        raise BadEncoding(f"header is not ASCII at byte {exc.start}") from exc
    body = segment[open_at + 5 :]
    if body.endswith(b"&&"):
        return header, body[:-2], True, ""
    close_at = body.rfind(b"&&")
    after = body[close_at + 2 :] if close_at >= 0 else b""
    if close_at >= 0 and after.startswith(b";") and b"=" in after and after.isascii():
        return header, body[:close_at], True, after.decode("ascii")
    return header, body, False, ""


def parse_header(header: str) -> tuple[tuple[str, str], ...]:
    """`QN=…;ST=…;` -> ((QN, …), (ST, …)); a missing `;` before `CP=` is tolerated.

    Raises:
        BadFieldValue: a header item without `=`.
        TooManyFields, FieldTooLong: over the limits of protocol.limits.
    """
    flat = header.replace("=", ";").split(";")
    if not flat[-1] and len(flat) == 2 * header.count("=") + 1 and header.count(";") == header.count("="):
        # The usual shape `K=V;K=V;`: pair the pieces with C-level slicing.
        fields = tuple(zip(flat[0:-1:2], flat[1::2], strict=True))
        check_header(fields, max(map(len, flat)) if len(header) > MAX_HEADER_TOKEN else 0)
        return fields
    items = []
    for item in header.split(";"):
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq:
            raise BadFieldValue(item[:20], "", "name=value")
        items.append((name, value))
    check_header(items, max((max(len(name), len(value)) for name, value in items), default=0))
    return tuple(items)


def decode_cp_text(content: bytes) -> tuple[str, tuple[str, ...]]:
    """CP bytes as text: UTF-8 (HJ 212-2017 §2), GBK from older units as a named tolerance.

    Raises:
        BadEncoding: neither decodes.
    """
    try:
        return content.decode("utf-8"), ()
    except UnicodeDecodeError:
        pass
    try:
        return content.decode("gbk"), (Tolerance.GBK_TEXT,)
    except UnicodeDecodeError as exc:
        raise BadEncoding(f"CP is neither UTF-8 nor GBK at byte {exc.start}") from exc


def _without_nul(named: dict[str, str]) -> dict[str, str]:
    """Header values without their NUL bytes, except MN: `check_identity` rejects an MN with one."""
    return {name: value if name == "MN" else value.replace("\x00", "") for name, value in named.items()}


def _int_field(name: str, text: str | None, digits: int) -> int | None:
    if text is None:
        return None
    if len(text) > digits or not text.isdigit():
        raise BadFieldValue(name, text, f"up to {digits} digits")
    return int(text)


def parse_segment(
    segment: bytes,
    *,
    cp_text: str | None = None,
    encrypted: bool = False,
    tolerances: tuple[str, ...] = (),
    parse_data: bool = True,
) -> Packet:
    """The Packet of one data segment, with its CP parsed into the model for its CN.

    `cp_text` overrides the CP content (the decrypted plaintext of an SM4 packet); `tolerances`
    are those the framing already needed; `parse_data=False` leaves the CP unparsed (a split
    part that does not stand alone).

    Raises:
        SegmentError: a missing CN or CP, a malformed header value, an undecodable CP.
    """
    header, content, closed, after = split_segment(segment)
    fields = parse_header(header)
    found = list(tolerances)
    named = dict(fields)
    if "\x00" in header:
        found.append(Tolerance.NUL_IN_FIELD)
        named = _without_nul(named)
    cn = named.get("CN")
    if cn is None:
        raise MissingField("CN")
    if len(cn) != 4 or not cn.isdigit():
        raise BadFieldValue("CN", cn, "four digits")
    qn = named.get("QN")
    if qn is None:
        found.append(Tolerance.MISSING_QN)
    flag_text = named.get("Flag")
    if flag_text is None:
        flag = None
        found.append(Tolerance.MISSING_FLAG)
    else:
        flag = _int_field("Flag", flag_text, 3)
        if flag is not None and flag > 255:
            raise BadFieldValue("Flag", str(flag), "0-255")
    if cp_text is None:
        cp_text, text_tolerances = decode_cp_text(content)
        found.extend(text_tolerances)
    if "\x00" in cp_text:
        cp_text = cp_text.replace("\x00", "")
        if Tolerance.NUL_IN_FIELD not in found:
            found.append(Tolerance.NUL_IN_FIELD)
    if not closed:
        found.append(Tolerance.CP_UNCLOSED)
    fields_after = parse_header(after) if after else ()
    if fields_after:
        found.append(Tolerance.FIELDS_AFTER_CP)
        if "\x00" in after:
            named.update(_without_nul(dict(fields_after)))
            if Tolerance.NUL_IN_FIELD not in found:
                found.append(Tolerance.NUL_IN_FIELD)
        else:
            named.update(fields_after)
        if flag is None and "Flag" in named:
            flag = _int_field("Flag", named["Flag"], 3)
            found.remove(Tolerance.MISSING_FLAG)
    st, pw, mn = named.get("ST"), named.get("PW"), named.get("MN")
    check_identity(qn, st, pw, mn, found)
    data = parse_cp(cn, cp_text, found) if parse_data else None
    data_time = getattr(data, "data_time", None)
    if data_time is not None and len(data_time) != 14:
        found.append(Tolerance.LONG_DATATIME if len(data_time) > 14 else Tolerance.SHORT_DATATIME)
    # Positional (the field order of Packet): keywords cost 0.7 µs more, once per packet.
    return Packet(
        fields,
        cp_text,
        qn,
        st,
        cn,
        pw,
        mn,
        flag,
        _int_field("PNUM", named["PNUM"], 4) if "PNUM" in named else None,
        _int_field("PNO", named["PNO"], 4) if "PNO" in named else None,
        "RF" in named and named["RF"] not in ("0", ""),
        closed,
        fields_after,
        tuple(found),
        encrypted,
        data,
    )


def encode_segment(packet: Packet, *, cp_text: str | None = None) -> bytes:
    """The segment bytes of a packet: header fields in order, then `CP=&&…&&` (UTF-8)."""
    parts = [f"{name}={value};" for name, value in packet.fields]
    parts.append("CP=&&")
    parts.append(packet.cp if cp_text is None else cp_text)
    if packet.cp_closed:
        parts.append("&&")
    for name, value in packet.fields_after_cp:
        parts.append(f";{name}={value}")
    return "".join(parts).encode("utf-8")
