"""`clusterctl verify` hands testinfra an ssh_config that logs in as every other command
does: the inventory's values, the operator's ssh_config where the inventory is silent
(ProxyJump included), strict host keys."""
from __future__ import annotations

from clusterctl.inventory import load_inventory
from clusterctl.sshconfig import SSH_CONFIG_ENV
from clusterctl.verify.run import ssh_config


def test_verify_ssh_config_follows_the_operators_config(tmp_path):
    inv = tmp_path / "inventory.yaml"
    inv.write_text("all:\n  vars: {ansible_ssh_private_key_file: /keys/lab, "
                   "ssh_known_hosts_file: /keys/known_hosts}\n"
                   "  hosts:\n"
                   "    n1: {ansible_host: 198.18.0.11, role: head}\n"
                   "    n3: {ansible_host: 198.18.0.13, ansible_port: 2222}\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text("Host n3 198.18.0.13\n  ProxyJump ops@198.18.0.11\n  User admin\n")
    hosts = list(load_inventory(inv).hosts.values())
    text = ssh_config(hosts, {SSH_CONFIG_ENV: str(cfg)})
    n3 = next(b for b in text.split("Host ") if b.startswith("n3\n"))
    assert "HostName 198.18.0.13" in n3 and "Port 2222" in n3
    assert "User admin" in n3                       # from ssh_config: the inventory is silent
    assert "IdentityFile /keys/lab" in n3 and "ProxyJump n3-jump1" in n3
    jump = next(b for b in text.split("Host ") if b.startswith("n3-jump1\n"))
    assert "HostName 198.18.0.11" in jump and "User ops" in jump
    n1 = next(b for b in text.split("Host ") if b.startswith("n1\n"))
    assert "ProxyJump" not in n1 and "UserKnownHostsFile /keys/known_hosts" in n1
    assert "Host *\n  StrictHostKeyChecking yes\n  BatchMode yes" in text
