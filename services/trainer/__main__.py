"""``python -m services.trainer``: run the trainer service."""

from libs.runtime import run_service
from services.trainer.service import SPEC

if __name__ == "__main__":
    run_service(SPEC)
