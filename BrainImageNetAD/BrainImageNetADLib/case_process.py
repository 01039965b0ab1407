"""The child process of a run started by a GUI (``job.PredictionJob``): one case through
``pipeline.run_case``.

``python -m BrainImageNetADLib.case_process SPEC`` where SPEC is JSON: ``source`` (a T1 path, or
{"GMD": wc1, "GMV": mwc1}), ``out_dir``, ``bundle`` and ``options`` (``CaseOptions.to_json``).
Progress goes to stderr as ``progress: STAGE FRACTION`` lines, a failure as one
``error: MESSAGE`` line; exit code 0 success, 2 bad input, 130 interrupted, 1 internal error.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .core.errors import run_command
from .core.progress import progress_for
from .pipeline import CaseOptions, run_case


def spec(source: Path | dict[str, Path], out_dir: Path, bundle: Path, options: CaseOptions) -> str:
    """The SPEC argument of a run (see the module's description)."""
    source_json: Any = {k: str(v) for k, v in source.items()} if isinstance(source, dict) else str(source)
    return json.dumps({"source": source_json, "out_dir": str(out_dir), "bundle": str(bundle), "options": options.to_json()})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the case of ``argv[0]`` (a SPEC); return the exit code."""
    content = json.loads((sys.argv[1:] if argv is None else argv)[0])
    source = content["source"]
    source = {k: Path(v) for k, v in source.items()} if isinstance(source, dict) else Path(source)

    def work() -> None:
        run_case(source, content["out_dir"], content["bundle"], CaseOptions.from_json(content["options"]), progress_for(True))

    return run_command(work)


if __name__ == "__main__":
    sys.exit(main())
