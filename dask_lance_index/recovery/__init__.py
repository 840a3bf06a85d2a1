"""Recovery: how a job survives lost workers, a dead driver and its own failure.

:mod:`.journal` records what a job planned and finished; :mod:`.resume` starts a
journal and carries on a job whose driver died; :mod:`.runner` runs every job
with retries and abandons a failed one; :mod:`.leftovers` removes what failed and
crashed jobs left on storage, and nothing else.
"""

from .journal import BuildJournal, default_journal_location
from .leftovers import abandon_build, cleanup, finish_journal
from .resume import probe_writable, resume_build, resume_journal, start_journal
from .runner import IndexJob, report, run

__all__ = [
    "BuildJournal", "IndexJob", "abandon_build", "cleanup", "default_journal_location", "finish_journal",
    "probe_writable", "report", "resume_build", "resume_journal", "run", "start_journal",
]
