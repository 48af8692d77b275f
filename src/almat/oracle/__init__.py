"""The oracle: reference calculations that label configurations (EMT, xTB, DFT, any ASE calculator)."""

from almat.oracle.calculators import CalculatorSpec, CalculatorSpecError
from almat.oracle.jobs import AseOracleMaker, label_with_calculator, record_labels
