from django.apps import AppConfig


class SftpdConfig(AppConfig):
    name = "sftpd"
