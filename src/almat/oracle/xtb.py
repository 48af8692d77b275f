"""The xTB oracle: GFN1-xTB through tblite's ASE calculator (``pip install tblite``).

A cheap, element-general reference for testing campaigns end to end (≈0.5 s per 13-atom Li6PS5Cl cell
on one core). Not a substitute for DFT labels.
"""

from __future__ import annotations

from pymatgen.core import Element, Structure

from almat.oracle.calculators import CalculatorSpec, CalculatorSpecError

#: GFN1-xTB and GFN2-xTB are parametrised for H to Rn (Z = 1..86)
XTB_ELEMENTS = frozenset(Element.from_Z(z).symbol for z in range(1, 87))


def xtb_spec(method: str = "GFN1-xTB", **kwargs) -> CalculatorSpec:
    """``CalculatorSpec`` of ``tblite.ase.TBLite(method=...)``; extra kwargs go to the calculator."""
    if method not in ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB"):
        raise CalculatorSpecError(f"unknown xTB method {method!r}; use 'GFN1-xTB', 'GFN2-xTB' or 'IPEA1-xTB'")
    return CalculatorSpec("tblite.ase", "TBLite", {"method": method, "verbosity": 0, **kwargs})


#: the default xTB oracle
GFN1_XTB = xtb_spec("GFN1-xTB")


def check_xtb_elements(elements) -> None:
    """Raise a ``ValueError`` naming the elements xTB has no parameters for.

    ``elements``: a ``Structure``, ASE ``Atoms``, or an iterable of element symbols.
    """
    if isinstance(elements, Structure):
        symbols = {el.symbol for el in elements.composition.elements}
    elif hasattr(elements, "get_chemical_symbols"):
        symbols = set(elements.get_chemical_symbols())
    else:
        symbols = {str(e) for e in elements}
    bad = sorted(symbols - XTB_ELEMENTS, key=lambda s: Element(s).Z if s in Element.__members__ else 999)
    if bad:
        raise ValueError(
            f"the xTB oracle (GFN1/GFN2-xTB) has no parameters for {', '.join(bad)}: it covers H to Rn "
            "(Z = 1-86). Use a DFT oracle for these elements"
        )
