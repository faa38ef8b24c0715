"""``python -m services.model_registry``: run the model registry service."""

from libs.runtime import run_service
from services.model_registry.service import SPEC

if __name__ == "__main__":
    run_service(SPEC)
