"""deploy/ recipes: start-node.sh argument handling (dry runs) and the KubeRay manifest's conventions."""
import subprocess
import sys

from tests.conftest import ROOT


def test_deploy_static_checks_pass():
    p = subprocess.run(["bash", str(ROOT / "deploy" / "check.sh"), sys.executable], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "deploy checks passed" in p.stdout
