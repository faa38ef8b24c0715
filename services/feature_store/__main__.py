"""``python -m services.feature_store``: run the feature-store service."""

from libs.runtime import run_service
from services.feature_store.service import SPEC

if __name__ == "__main__":
    run_service(SPEC)
