"""``python -m services.inference``: run the inference service."""

from libs.runtime import run_service
from services.inference.service import SPEC

if __name__ == "__main__":
    run_service(SPEC)
