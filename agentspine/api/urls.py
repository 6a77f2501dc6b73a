from django.urls import path, re_path
from rest_framework.routers import SimpleRouter

from rapidvalue.api.views import UUID_LOOKUP

from . import views

router = SimpleRouter(trailing_slash=False)
router.register("agents", views.AgentViewSet, basename="agent")

JOB = rf"^agent/jobs/(?P<job_id>{UUID_LOOKUP})"

urlpatterns = [
    path("agent/register", views.RegisterView.as_view(), name="agent-register"),
    path("agent/token/rotate", views.RotateTokenView.as_view(), name="agent-token-rotate"),
    path("agent/heartbeat", views.HeartbeatView.as_view(), name="agent-heartbeat"),
    path("agent/jobs/next", views.NextJobView.as_view(), name="agent-jobs-next"),
    re_path(JOB + r"/chunks$", views.JobChunkView.as_view(), name="agent-job-chunks"),
    re_path(JOB + r"/complete$", views.JobCompleteView.as_view(), name="agent-job-complete"),
    re_path(JOB + r"/fail$", views.JobFailView.as_view(), name="agent-job-fail"),
    re_path(JOB + r"/release$", views.JobReleaseView.as_view(), name="agent-job-release"),
    re_path(JOB + r"/lease$", views.JobLeaseView.as_view(), name="agent-job-lease"),
    *router.urls,
]
