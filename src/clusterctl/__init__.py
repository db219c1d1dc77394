"""clusterctl: Ansible-style provisioning for distributed LLM inference clusters."""

__version__ = "0.1.0"
