"""Partner API for import/export jobs and their runs (registered by `register(router)`).

- ``/api/v1/imports`` and ``/api/v1/exports``: list and create (``jobs:read`` /
  ``jobs:write``); ``/{id}``: read, change (PATCH), delete.
- ``POST /api/v1/{imports|exports}/{id}/runs`` (``jobs:run``): queue a run now; answers
  202 with the queued run, whose progress is at ``/api/v1/runs/{id}``.
- ``/api/v1/runs`` and ``/api/v1/runs/{id}`` (``jobs:read``).

Everything is the partner's own: another partner's job or run is a 404, the same answer as
an id that does not exist. Jobs are validated by the model (``full_clean()``), the same
code path as the admin; an authorization must be one of the partner's, an audience one that
staff shared with the partner (`Audience.partners`): the profile store holds every
partner's data, so an audience is never open to all partners by default.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, Q, QuerySet
from django.urls import reverse
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.exceptions import Conflict, validation_error
from authorizations.models import Authorization
from profiles.models import Audience
from transfers import schedules, service
from transfers.models import ExportJob, ImportJob, Job, Run
from transfers.runs import COUNTERS

READ, WRITE, RUN = "jobs:read", "jobs:write", "jobs:run"
JOB_FIELDS = [
    "id",
    "name",
    "authorization",
    "folder",
    "enabled",
    "schedule_kind",
    "interval_minutes",
    "cron",
    "daily_time",
    "run_once_at",
    "schedule_timezone",
    "schedule",
    "next_run_at",
    "last_run",
    "created_at",
    "updated_at",
]
JOB_READ_ONLY = ["id", "schedule", "next_run_at", "last_run", "created_at", "updated_at"]


# -- serializers ----------------------------------------------------------------------------
class RunSerializer(serializers.ModelSerializer):
    job = serializers.SerializerMethodField(help_text="The id of the import or export job.")
    job_name = serializers.SerializerMethodField()
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "kind",
            "job",
            "job_name",
            "status",
            "trigger",
            "attempts",
            "queued_at",
            "started_at",
            "finished_at",
            "duration_seconds",
            *COUNTERS,
            "file_name",
            "sha256",
            "skipped_files",
            "rejected_rows",
            "error",
        ]
        read_only_fields = fields

    def get_job(self, obj: Run) -> int | None:
        return obj.import_job_id if obj.kind == Run.Kind.IMPORT else obj.export_job_id

    def get_job_name(self, obj: Run) -> str:
        job = obj.job
        return job.name if job else ""


class LastRunSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    queued_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)


class JobSerializer(serializers.ModelSerializer):
    """Shared by both kinds; validation is the model's ``full_clean()``."""

    authorization = serializers.PrimaryKeyRelatedField(
        queryset=Authorization.objects.none(),
        help_text="Id of one of your SFTP authorizations (or managed SFTP accounts).",
    )
    schedule = serializers.SerializerMethodField(help_text="The schedule in words.")
    next_run_at = serializers.SerializerMethodField(help_text="Next scheduled start, if any.")
    last_run = serializers.SerializerMethodField()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        partner = self.context.get("partner")
        if partner is not None:
            self.fields["authorization"].queryset = Authorization.objects.filter(partner=partner)

    def get_schedule(self, obj: Job) -> str:
        return schedules.describe(obj)

    def get_next_run_at(self, obj: Job) -> str | None:
        when = schedules.next_run(obj)
        return serializers.DateTimeField().to_representation(when) if when else None

    @extend_schema_field(LastRunSerializer(allow_null=True))
    def get_last_run(self, obj: Job) -> dict[str, Any] | None:
        run = obj.runs.order_by("-queued_at", "-id").first()
        return LastRunSerializer(run).data if run else None

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        model = self.Meta.model
        instance = self.instance or model(partner=self.context["partner"])
        for name, value in attrs.items():
            setattr(instance, name, value)
        try:
            instance.full_clean()
        except DjangoValidationError as exc:
            raise validation_error(exc) from None
        self._prepared = instance
        return attrs

    def create(self, validated_data: dict[str, Any]) -> Job:
        self._prepared.save()
        return self._prepared

    def update(self, instance: Job, validated_data: dict[str, Any]) -> Job:
        self._prepared.save()
        return self._prepared


class ImportJobSerializer(JobSerializer):
    class Meta:
        model = ImportJob
        fields = [
            *JOB_FIELDS[:4],
            "pattern",
            "format",
            "csv_delimiter",
            "csv_quotechar",
            "csv_encoding",
            "csv_header",
            "identity_field",
            "field_mapping",
            "timestamp_field",
            "on_error",
            "after_import",
            "archive_folder",
            *JOB_FIELDS[4:],
        ]
        read_only_fields = JOB_READ_ONLY
        validators: list = []  # the model validates (constraints included) in full_clean()


class ExportJobSerializer(JobSerializer):
    audience = serializers.PrimaryKeyRelatedField(
        queryset=Audience.objects.none(),
        help_text="Id of an audience that was shared with you.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        partner = self.context.get("partner")
        if partner is not None:
            self.fields["audience"].queryset = Audience.objects.filter(partners=partner)

    class Meta:
        model = ExportJob
        fields = [
            *JOB_FIELDS[:4],
            "audience",
            "fields",
            "format",
            "csv_delimiter",
            "csv_header",
            "compression",
            "filename_template",
            "collision",
            "write_manifest",
            "empty_audience",
            *JOB_FIELDS[4:],
        ]
        read_only_fields = JOB_READ_ONLY
        validators: list = []


# -- views ----------------------------------------------------------------------------------
class PartnerScoped:
    """The partner's own objects only; schema generation has no partner."""

    def partner_filter(self, queryset: QuerySet) -> QuerySet:
        if getattr(self, "swagger_fake_view", False):
            return queryset.none()
        return queryset.filter(partner=self.request.user.partner)

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["partner"] = self.request.user.partner
        return context


class JobViewSet(
    PartnerScoped,
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    model: type[Job]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    lookup_value_regex = "[0-9]+"
    required_scopes = {
        "list": READ,
        "retrieve": READ,
        "create": WRITE,
        "update": WRITE,  # PUT is not offered (405), but the scope check comes first
        "partial_update": WRITE,
        "destroy": WRITE,
        "runs": RUN,
    }

    def get_queryset(self) -> QuerySet[Job]:
        queryset = self.model.objects.select_related("partner", "authorization")
        return self.partner_filter(queryset).order_by("name", "id")

    def perform_destroy(self, instance: Job) -> None:
        if service.active_runs(instance).filter(status=Run.Status.RUNNING).exists():
            raise Conflict("A run of this job is in progress; delete the job once it has ended.")
        try:
            instance.delete()
        except ProtectedError as exc:
            raise Conflict("This job is still referenced; it cannot be deleted.") from exc

    @extend_schema(
        request=None,
        responses={202: RunSerializer},
        summary="Run the job now",
        description="Queues a run (trigger `api`) and answers at once with it; follow it at "
        "`/api/v1/runs/{id}` (also in the Location header). Needs `jobs:run`. A disabled "
        "job answers 409.",
    )
    @action(detail=True, methods=["post"], url_path="runs")
    def runs(self, request: Request, pk: str | None = None) -> Response:
        job = self.get_object()
        if not job.enabled:
            raise Conflict("This job is disabled; ask us to enable it, or enable it first.")
        run = service.start_run(job, Run.Trigger.API)
        location = reverse("api:run-detail", args=[run.pk])
        return Response(
            RunSerializer(run).data, status=status.HTTP_202_ACCEPTED, headers={"Location": location}
        )


def _job_schema(kind: str, tag: str) -> dict[str, Any]:
    return {
        "list": extend_schema(summary=f"List your {kind} jobs", tags=[tag]),
        "retrieve": extend_schema(summary=f"One of your {kind} jobs", tags=[tag]),
        "create": extend_schema(summary=f"Create an {kind} job", tags=[tag]),
        "partial_update": extend_schema(summary=f"Change an {kind} job", tags=[tag]),
        "destroy": extend_schema(summary=f"Delete an {kind} job and its runs", tags=[tag]),
        "runs": extend_schema(tags=[tag]),
    }


@extend_schema_view(**_job_schema("import", "imports"))
class ImportJobViewSet(JobViewSet):
    model = ImportJob
    queryset = ImportJob.objects.none()  # the real one is per partner: get_queryset
    serializer_class = ImportJobSerializer


@extend_schema_view(**_job_schema("export", "exports"))
class ExportJobViewSet(JobViewSet):
    model = ExportJob
    queryset = ExportJob.objects.none()
    serializer_class = ExportJobSerializer

    def get_queryset(self) -> QuerySet[Job]:
        return super().get_queryset().select_related("audience")


@extend_schema_view(
    list=extend_schema(
        summary="List your runs, newest first",
        tags=["runs"],
        parameters=[
            OpenApiParameter("kind", str, enum=["import", "export"]),
            OpenApiParameter("status", str, enum=list(Run.Status.values)),
            OpenApiParameter("job", int, description="Runs of this job (with `kind`)."),
        ],
    ),
    retrieve=extend_schema(summary="One of your runs, with its progress", tags=["runs"]),
)
class RunViewSet(PartnerScoped, viewsets.ReadOnlyModelViewSet):
    serializer_class = RunSerializer
    queryset = Run.objects.none()
    lookup_value_regex = "[0-9]+"
    required_scopes = {"list": READ, "retrieve": READ}

    def get_queryset(self) -> QuerySet[Run]:
        queryset = self.partner_filter(Run.objects.select_related("import_job", "export_job"))
        params = self.request.query_params if self.request else {}
        if params.get("kind") in Run.Kind.values:
            queryset = queryset.filter(kind=params["kind"])
        if params.get("status") in Run.Status.values:
            queryset = queryset.filter(status=params["status"])
        job = params.get("job", "")
        if job.isdigit():  # import and export jobs are numbered apart: `kind` tells which
            queryset = queryset.filter(Q(import_job_id=job) | Q(export_job_id=job))
        return queryset.order_by("-queued_at", "-id")


def register(router) -> None:
    """Add the jobs and runs endpoints to the API's router (api/urls.py)."""
    router.register("imports", ImportJobViewSet, basename="import-job")
    router.register("exports", ExportJobViewSet, basename="export-job")
    router.register("runs", RunViewSet, basename="run")
