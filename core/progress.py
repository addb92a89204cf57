"""One progress bar for training and batch generation: rich on a terminal (rank 0), silent otherwise."""

from __future__ import annotations

import sys


class Progress:
    """``with Progress(label, total, done, enabled) as bar: bar.advance(n, info="...")``."""

    def __init__(self, label: str, total: int, done: int = 0, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else bool(enabled)
        self.bar = self.task = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = RichProgress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                    console=Console(stderr=True))
            self.task = self.bar.add_task(label, total=total, completed=done, info="")

    def __enter__(self) -> "Progress":
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc) -> bool:
        if self.bar is not None:
            self.bar.stop()
        return False

    def advance(self, n: int = 1, info: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, **({"info": info} if info is not None else {}))

    def show(self, info: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, info=info)
