"""Campaign reports: paper-ready PNG figures and an HTML page embedding them."""

from almat.report.html import report_command, write_report
from almat.report.plots import ReportData
