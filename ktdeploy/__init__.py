"""ktdeploy: provision DeepSeek-R1 endpoints (KTransformers + Open WebUI) with Ansible."""

__version__ = "0.1.0"
