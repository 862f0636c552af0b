from django.apps import AppConfig


class LyticsopsConfig(AppConfig):
    name = "lyticsops"
    verbose_name = "lyticsops"

    def ready(self) -> None:
        from lyticsops import checks  # noqa: F401  (registers the system checks)
