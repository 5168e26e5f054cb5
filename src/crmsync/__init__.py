"""crmsync: push selected contacts to Brevo, HubSpot, Mautic and n8n."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crmsync")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

USER_AGENT = f"crmsync/{__version__}"
