"""The progress bar of a wait: chunks written of chunks total, with ``tqdm.auto`` (a widget in a notebook, text elsewhere)."""

from __future__ import annotations

from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .jobs import Job


class Progress:
    """A bar that follows a job's records; nothing at all when disabled."""

    def __init__(self, job: Job, enabled: bool = True, file: IO[str] | None = None) -> None:
        self.job = job
        self.enabled = enabled
        self.file = file
        self._bar: Any = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.close()

    def show(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        progress = record.get("progress") or {}
        total, written = progress.get("chunks_total"), progress.get("chunks_written") or 0
        if self._bar is None:
            from tqdm.auto import tqdm

            where = {"file": self.file} if self.file is not None else {}
            self._bar = tqdm(total=total, unit="chunk", desc=self.job.job_id, **where)
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.set_postfix_str(str(record.get("status", "")), refresh=False)
        self._bar.update(written - self._bar.n)
