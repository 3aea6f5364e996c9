"""The standard's code tables as enums (HJ 212-2017 §5, §7, Table 5-9; HJ 212-2025 additions).

No logic lives here. Values are the codes as they appear on the wire.
"""

from enum import IntEnum, IntFlag, StrEnum

MAX_SEGMENT_BYTES = 1024  # HJ 212-2017 §2: data segment 0..1024
MAX_CP_BYTES = 950


class ProtocolVersion(IntEnum):
    """The six version bits of Flag, `(flag >> 2) & 0x3F`."""

    HJT212_2005 = 0
    HJ212_2017 = 1
    HJ212_2025 = 2

    @property
    def label(self) -> str:
        return ("2005", "2017", "2025")[self.value]


class PacketFlag(IntFlag):
    """Flag bits named by meaning: the 2025 text swapped the letters A and D, not the bits."""

    ACK_REQUESTED = 1  # 2017 "A", 2025 "D": the receiver must reply
    SPLIT = 2  # 2017 "D", 2025 "A": PNUM and PNO are present


class St(StrEnum):
    """System codes (HJ 212-2017 Table 5; 44 is new in 2025)."""

    SURFACE_WATER_QUALITY = "21"
    AIR_QUALITY = "22"
    ACOUSTIC_QUALITY = "23"
    GROUNDWATER_QUALITY = "24"
    SOIL_QUALITY = "25"
    SEAWATER_QUALITY = "26"
    VOC_MONITORING = "27"
    AIR_SOURCE = "31"
    SURFACE_WATER_SOURCE = "32"
    GROUNDWATER_SOURCE = "33"
    MARINE_SOURCE = "34"
    SOIL_SOURCE = "35"
    NOISE_SOURCE = "36"
    VIBRATION_SOURCE = "37"
    RADIOACTIVE_SOURCE = "38"
    CONSTRUCTION_DUST = "39"
    ELECTROMAGNETIC_SOURCE = "41"
    ELECTRICITY = "44"
    KEY_PRODUCTION_CONDITIONS = "45"
    FLUE_GAS_PROCESS = "51"
    WASTEWATER_PROCESS = "52"
    SYSTEM_INTERACTION = "91"


class Cn(StrEnum):
    """Command codes of 2005, 2017 and 2025 (HJ 212-2017 Table 9, §14, 2025 §1.5)."""

    SET_TIMEOUTS = "1000"
    UPLOAD_HARDWARE_SN = "1001"  # 2025 (2005: set over-limit alarm time)
    SET_MN = "1002"  # 2025
    GET_TIME = "1011"
    SET_TIME = "1012"
    TIME_CALIBRATION_REQUEST = "1013"
    KEY_EXCHANGE = "1014"  # 2025
    GET_ALARM_LIMITS = "1021"  # 2005
    SET_ALARM_LIMITS = "1022"  # 2005
    GET_PLATFORM_ADDRESS = "1031"  # 2005
    SET_PLATFORM_ADDRESS = "1032"  # 2005
    GET_REPORT_TIME = "1041"  # 2005
    SET_REPORT_TIME = "1042"  # 2005
    GET_RTD_INTERVAL = "1061"
    SET_RTD_INTERVAL = "1062"
    GET_MIN_INTERVAL = "1063"
    SET_MIN_INTERVAL = "1064"
    SET_PASSWORD = "1072"
    REALTIME_DATA = "2011"
    STOP_REALTIME_DATA = "2012"
    RAW_DATA = "2013"  # 2025
    RUNNING_STATE = "2021"
    STOP_RUNNING_STATE = "2022"
    DAY_DATA = "2031"
    DAY_RUNNING_TIME = "2041"
    MINUTE_DATA = "2051"
    NOISE_SINGLE = "2052"  # 2025
    HOUR_DATA = "2061"
    STANDARD_CHECK_DATA = "2062"  # 2025
    GET_ALARM_RECORDS = "2071"  # 2005
    ALARM_EVENT = "2072"  # 2005
    ALARM_DATA = "2073"  # 2005 (vendor: over-limit alarm data)
    RESTART_TIME = "2081"
    FURNACE_TEMP_5MIN = "2111"  # 2025
    CALIBRATE = "3011"
    SAMPLE_NOW = "3012"
    START_CLEANING = "3013"
    COMPARISON_SAMPLING = "3014"
    OVER_LIMIT_RETENTION = "3015"
    SET_SAMPLING_PERIOD = "3016"
    GET_SAMPLING_PERIOD = "3017"
    GET_SAMPLE_OUTPUT_TIME = "3018"
    INSTRUMENT_SN = "3019"
    SITE_INFO = "3020"
    SET_SITE_PARAMETER = "3021"
    SAMPLE_RETENTION_TASK = "3022"  # 2025
    START_STANDARD_CHECK = "3024"  # 2025
    DAS_INFO_2005 = "8013"  # 2005 vendor extension: DAS information upload
    REQUEST_REPLY = "9011"
    EXECUTION_RESULT = "9012"
    NOTIFICATION_REPLY = "9013"
    DATA_REPLY = "9014"
    HEARTBEAT = "9015"  # 2025 (vendor habit before)
    HEARTBEAT_2005 = "9021"  # 2005 vendor extension


class QnRtn(IntEnum):
    """Request reply codes (HJ 212-2017 Table 7)."""

    READY = 1
    REJECTED = 2
    PW_ERROR = 3
    MN_ERROR = 4
    ST_ERROR = 5
    FLAG_ERROR = 6
    QN_ERROR = 7
    CN_ERROR = 8
    CRC_ERROR = 9
    UNKNOWN = 100


class ExeRtn(IntEnum):
    """Execution result codes (HJ 212-2017 Table 6)."""

    SUCCESS = 1
    FAILED = 2
    BAD_CONDITIONS = 3
    TIMEOUT = 4
    BUSY = 5
    SYSTEM_FAULT = 6
    NO_DATA = 100


class DataFlag(StrEnum):
    """Per-value data flags (HJ 212-2017 Table 8; P is 2005 only)."""

    NORMAL = "N"
    STOPPED = "F"
    MAINTENANCE = "M"
    SET_VALUE = "S"
    FAULT = "D"
    CALIBRATION = "C"
    OVER_RANGE = "T"
    COMMUNICATION_FAULT = "B"
    POWER_FAULT = "P"


# CNs whose packets from a DAS are uploads: answered with 9014 when the ack bit is set.
UPLOAD_CNS = frozenset(
    {
        "2011", "2013", "2021", "2031", "2041", "2051", "2052", "2061", "2062", "2072", "2073",
        "2081", "2111", "3015", "3019", "3020", "8013",
    }
)  # fmt: skip
# CNs whose packets carry per-factor data (DataCp): 2017/2025 uploads and 2005's 2072/2073/8013.
DATA_CNS = frozenset(
    {"2011", "2013", "2021", "2031", "2041", "2051", "2052", "2061", "2062", "2072", "2073", "2111", "8013"}
)
# DAS-originated notifications: answered with 9013 (HJ 212-2017 §9.1; 2025 §2.5).
NOTIFICATION_CNS = frozenset({"1001", "1013", "1014"})
REPLY_CNS = frozenset({"9011", "9012", "9013", "9014"})
HEARTBEAT_CNS = frozenset({"9015", "9021"})
