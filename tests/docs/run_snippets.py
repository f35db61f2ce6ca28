"""Run documentation snippets, each as the code of a fresh module, and report as JSON lines.

Reads ``[{"where": "page.md:LINE", "code": "..."}]`` on stdin; prints one ``{"where", "error"}``
line per snippet (``error`` is None or the traceback). Runs in its own process so Airflow reads
the environment the test sets.
"""

from __future__ import annotations

import json
import sys
import traceback
import types


def main() -> None:
    for snippet in json.load(sys.stdin):
        name = "docs_snippet_" + snippet["where"].replace(".", "_").replace(":", "_").replace("-", "_")
        module = types.ModuleType(name)
        module.__file__ = snippet["where"]
        sys.modules[name] = module
        try:
            exec(compile(snippet["code"], snippet["where"], "exec"), module.__dict__)
            error = None
        except BaseException:  # report every failure, including SystemExit from a snippet
            error = traceback.format_exc()
        print(json.dumps({"where": snippet["where"], "error": error}), flush=True)


if __name__ == "__main__":
    main()
