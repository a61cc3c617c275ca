"""Dependency audit of the running environment: known vulnerabilities in every installed package.

    pip install pip-audit && python .ci/audit.py

pip-audit checks each pinned package (`pip freeze`, the project itself left out) against PyPI's advisories,
which it reads per version (pypi.org/pypi/NAME/VERSION/json). Where that is out of reach, as behind this
project's registry proxy, which serves only the per-project page, a package that is at its latest release is
checked with that page's `vulnerabilities` (PyPI lists there the advisories of the latest release); any other
package is reported as not audited. Exit status 1 when a vulnerability is found.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import urllib.request


def pip_audit(pinned: str) -> list[dict]:
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
        requirements.write(pinned)
        requirements.flush()
        out = subprocess.run([sys.executable, "-m", "pip_audit", "-r", requirements.name, "--no-deps",
                              "--disable-pip", "--progress-spinner", "off", "-f", "json"],
                             capture_output=True, text=True)
    if not out.stdout.strip():
        sys.exit(f"pip-audit failed: {out.stderr.strip()}")
    return json.loads(out.stdout)["dependencies"]


def latest_release_advisories(name: str, version: str) -> list[str] | None:
    """Advisory ids for name==version when it is the latest release, None when that cannot be told."""
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as response:
            project = json.load(response)
    except (OSError, ValueError):
        return None
    if project["info"]["version"] != version:
        return None
    return [v["id"] for v in project.get("vulnerabilities") or []]


def main() -> int:
    pinned = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout
    # Names as pip-audit reports them (PEP 503: lower case, runs of "-_." as "-").
    versions = {re.sub(r"[-_.]+", "-", name).lower(): version
                for name, version in (line.split("==", 1) for line in pinned.splitlines() if "==" in line)}
    by_pip_audit, by_latest, not_audited, found = 0, 0, [], []
    for dependency in pip_audit(pinned):
        name = dependency["name"]
        version = dependency.get("version") or versions.get(name, "")
        if "skip_reason" not in dependency:
            by_pip_audit += 1
            found += [f"{name} {version}: {v['id']} (fixed in {', '.join(v['fix_versions']) or 'no release'})"
                      for v in dependency["vulns"]]
        elif (advisories := latest_release_advisories(name, version)) is not None:
            by_latest += 1
            found += [f"{name} {version}: {advisory}" for advisory in advisories]
        else:
            not_audited.append(f"{name} {version}")
    print(f"dependency audit: {by_pip_audit + by_latest + len(not_audited)} packages; {by_pip_audit} audited by "
          f"pip-audit, {by_latest} at their latest release audited from PyPI's project page, "
          f"{len(not_audited)} not audited{': ' + ', '.join(not_audited) if not_audited else ''}")
    print(f"known vulnerabilities: {len(found)}" + "".join(f"\n  {line}" for line in found))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
