"""deploy/ recipes: start-node.sh argument handling (dry runs) and the KubeRay manifest's conventions."""
import subprocess
import sys

from tests.conftest import ROOT


def test_deploy_static_checks_pass():
    p = subprocess.run(["bash", str(ROOT / "deploy" / "check.sh"), sys.executable], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "deploy checks passed" in p.stdout


def test_the_guide_section_on_a_test_fleet_is_the_script():
    """Every command of the guide's "A fleet on one machine for testing" is one test-fleet.sh accepts, and
    the script starts its nodes with the guide's own start-node.sh lines (steps 3 and 4)."""
    import re
    guide = (ROOT / "deploy" / "README.md").read_text()
    section = guide.split("## A fleet on one machine for testing", 1)[1].split("\n## ", 1)[0]
    script = (ROOT / "deploy" / "test-fleet.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "deploy" / "test-fleet.sh")]).returncode == 0
    usage = subprocess.run([str(ROOT / "deploy" / "test-fleet.sh"), "--help"], capture_output=True, text=True).stdout
    used = re.findall(r"deploy/test-fleet\.sh (\w+)", section)
    assert {"up", "exec", "link", "stop", "start", "add", "down"} <= set(used)
    for sub in used:
        assert re.search(rf"\$PROG {sub}\b|\$PROG (\w+\|)*{sub}\b", usage.replace("test-fleet.sh", "$PROG")), sub
    walkthrough = guide.split("### 3. Start the head", 1)[1].split("### 5.", 1)[0]
    assert "deploy/start-node.sh head cpu --name" in walkthrough and "start_node head head cpu" in script
    assert "--address HEAD:6379 --name" in walkthrough and '--address "$(host_field head 2):$HEAD_PORT"' in script
