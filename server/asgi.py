"""The ASGI entry point for `regulars serve` workers: settings come from the environment."""

from server.app import create_app
from server.infra.observability import configure_logging
from server.settings import load_settings

settings = load_settings()
configure_logging(settings.log_format, settings.log_level)
app = create_app(settings)
