"""Factor sets of simulated sites: which codes a device reports and what its values look like.

Pure data plus one lookup. Codes and 2005 codes come from `protocol.factors.FACTORS` (HJ 212-2017
Appendix B); the magnitudes below are plausible for a coal-fired boiler stack (ST 31) and an
industrial wastewater outlet (ST 32), not taken from any one site.
"""

from dataclasses import dataclass

from hj212gw.protocol.factors import FACTORS


@dataclass(frozen=True, slots=True)
class FactorProfile:
    """How one factor behaves. `kind`: "flow", "pollutant" (has Cou) or "state" (no Cou)."""

    code: str
    base: float
    daily_amplitude: float  # fraction of base, peak mid-afternoon
    noise: float  # fraction of base, uniform +-
    kind: str = "pollutant"
    corrected: bool = False  # flue gas: also send Zs* values (HJ 212-2017 §6.1)
    limit: float | None = None  # emission limit, for the over-limit scenario
    decimals: int = 1

    @property
    def code_2005(self) -> str:
        factor = FACTORS.get(self.code)
        return factor.code_2005 if factor and factor.code_2005 else self.code


def _decimals(code: str) -> int:
    data_type = FACTORS[code].data_type or "N4"
    _, _, dec = data_type.partition(".")
    return max(int(dec or 0), 1)


def _p(code: str, base: float, amp: float, noise: float, kind: str = "pollutant", **kw: object) -> FactorProfile:
    return FactorProfile(code, base, amp, noise, kind, decimals=_decimals(code), **kw)  # type: ignore[arg-type]


AIR_SOURCE: tuple[FactorProfile, ...] = (
    _p("a00000", 85.0, 0.15, 0.03, "flow"),
    _p("a34013", 4.5, 0.2, 0.15, corrected=True, limit=10.0),
    _p("a21026", 22.0, 0.25, 0.1, corrected=True, limit=35.0),
    _p("a21002", 38.0, 0.2, 0.08, corrected=True, limit=50.0),
    _p("a19001", 9.8, 0.05, 0.03, "state"),
    _p("a01011", 11.5, 0.15, 0.03, "state"),
    _p("a01012", 48.0, 0.05, 0.02, "state"),
    _p("a01013", 0.45, 0.1, 0.05, "state"),
    _p("a01014", 8.5, 0.1, 0.05, "state"),
)

WATER_SOURCE: tuple[FactorProfile, ...] = (
    _p("w00000", 17.5, 0.4, 0.05, "flow"),
    _p("w01018", 40.0, 0.2, 0.08, limit=50.0),
    _p("w21003", 1.1, 0.25, 0.1, limit=5.0),
    _p("w21011", 0.32, 0.2, 0.1, limit=0.5),
    _p("w21001", 9.5, 0.2, 0.08, limit=15.0),
    _p("w01001", 7.3, 0.03, 0.01, "state"),
)

PROFILES: dict[str, tuple[FactorProfile, ...]] = {"31": AIR_SOURCE, "32": WATER_SOURCE}


def profile_for(st: str, codes: tuple[str, ...] | None = None) -> tuple[FactorProfile, ...]:
    """The factor set for system code `st`, optionally narrowed to `codes` (in that order).

    Raises:
        ValueError: an unknown ST or a code that the ST's profile does not have.
    """
    try:
        full = PROFILES[st]
    except KeyError:
        raise ValueError(f"no factor profile for ST={st}; known: {sorted(PROFILES)}") from None
    if not codes:
        return full
    by_code = {p.code: p for p in full}
    missing = [c for c in codes if c not in by_code]
    if missing:
        raise ValueError(f"ST={st} profile has no factor {missing}")
    return tuple(by_code[c] for c in codes)
