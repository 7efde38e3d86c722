"""The page of an output folder (``OUTPUT/index.html``): what a run made, beside its inputs,
what failed and why, and what is not made yet.

- :mod:`~rvgen.report.record`: the folder's record of failures, planned images and runs;
- :mod:`~rvgen.report.folder`: a folder read back (sidecars and record) for its page;
- :mod:`~rvgen.report.thumbs`: the cached thumbnails;
- :mod:`~rvgen.report.page`: the HTML;
- :mod:`~rvgen.report.write`: :func:`write_report`, a folder's page written;
- :mod:`~rvgen.report.live`: :class:`PageReporter`, the page kept up to date while a run goes.
"""

from rvgen.report.live import PageReporter
from rvgen.report.write import PAGE_NAME, write_report

__all__ = ["PAGE_NAME", "PageReporter", "write_report"]
