"""Reading applied definitions back: pages of feature views, one view and its versions."""

from __future__ import annotations

from lathe.feature_store.v1 import message_pb2 as m
from libs.errors import NotFound
from services.feature_store.store.definitions import DefinitionQueries


class DefinitionCatalog:
    def __init__(self, queries: DefinitionQueries) -> None:
        self._queries = queries

    async def feature_views_page(
        self, *, after_name: str, limit: int
    ) -> tuple[list[m.FeatureView], bool]:
        """The latest version of up to ``limit`` views named after ``after_name``, in name
        order, and whether more follow."""
        return await self._queries.latest_views_page(after_name=after_name, limit=limit)

    async def feature_view(self, name: str, version: int) -> tuple[m.FeatureView, list[int], str]:
        """One version of a view (0: the latest), every version it has and why it is
        deprecated (""); NotFound if there is no such version (or the view was deleted)."""
        view = await self._queries.version("feature_view", name, version)
        if not isinstance(view, m.FeatureView):
            which = f"version {version} of " if version else ""
            raise NotFound(f"no {which}feature view {name!r}; ListFeatureViews shows them")
        versions = await self._queries.versions("feature_view", name)
        return view, versions, await self._queries.deprecation("feature_view", name)
