from django.apps import AppConfig


class SftpdConfig(AppConfig):
    name = "sftpd"

    def ready(self) -> None:
        from sftpd import signals  # noqa: F401  (connects the receivers)
