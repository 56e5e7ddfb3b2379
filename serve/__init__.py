"""Serving: a concurrent service over one engine directory, its HTTP API and web page.

Stands on `sdtrt.runtime` only; the HTTP parts need the `serve` extra (FastAPI, uvicorn,
prometheus-client): `pip install 'sdtrt[serve]'`.
"""

from sdtrt.serve.jobs import GenerationParams, Job, JobResult, JobState
from sdtrt.serve.service import Service

__all__ = ["GenerationParams", "Job", "JobResult", "JobState", "Service"]
